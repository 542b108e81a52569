//! The pages, built into the binary (no build step, no CDN): plain HTML, one style sheet, and small scripts that
//! listen to `/events` and draw the charts on canvases.

pub const CONSOLE_HTML: &str = include_str!("assets/console.html");
pub const PARTICIPANT_HTML: &str = include_str!("assets/participant.html");
pub const FEEDBACK_HTML: &str = include_str!("assets/feedback.html");

/// The file under `/assets/` called `name`: its content type and text.
pub fn asset(name: &str) -> Option<(&'static str, &'static str)> {
    let css = "text/css; charset=utf-8";
    let js = "text/javascript; charset=utf-8";
    match name {
        "style.css" => Some((css, include_str!("assets/style.css"))),
        "stream.js" => Some((js, include_str!("assets/stream.js"))),
        "console.js" => Some((js, include_str!("assets/console.js"))),
        "screen.js" => Some((js, include_str!("assets/screen.js"))),
        _ => None,
    }
}
