"use strict";
// The stimulus computer's screens: /participant shows the newest reconstruction alone; /feedback shows the
// neurofeedback value (-1 to 1) as a bar growing up (positive) or down (negative) from the middle line.
(function () {
  const recon = document.getElementById("recon");
  const bar = document.getElementById("feedback-bar");
  function showFeedback(value) {
    if (!bar || value === null || value === undefined) return;
    const v = Math.max(-1, Math.min(1, value));
    const half = Math.abs(v) * 50;
    bar.style.top = (v >= 0 ? 50 - half : 50) + "%";
    bar.style.height = half + "%";
    bar.classList.toggle("negative", v < 0);
    bar.parentElement.setAttribute("aria-valuenow", v.toFixed(3));
    bar.dataset.value = v;
  }
  connectEvents({
    frame(frame) {
      if (recon) showFrameImage(recon, frame.reconstruction, frame);
      showFeedback(frame.feedback);
    },
  });
})();
