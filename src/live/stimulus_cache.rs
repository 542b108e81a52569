//! The true-stimulus images already drawn, so that a repeated stimulus costs no second pass of the generator.

/// Memory the cache of true-stimulus images may take (64 images at 1024 x 1024).
const STIMULUS_CACHE_BYTES: usize = 256 << 20;

/// A true-stimulus image for the display, and whether it came from the cache.
pub(super) struct StimulusImage {
    pub(super) pixels: Vec<u32>,
    pub(super) cached: bool,
}

/// The true-stimulus images already drawn, by stimulus id, so that a repeated stimulus (test sets repeat each
/// face many times) costs no second pass of the generator; the oldest is dropped when the cache is full.
pub(super) struct StimulusCache {
    images: std::collections::HashMap<usize, Vec<u32>>,
    oldest_first: std::collections::VecDeque<usize>,
    capacity: usize,
}

impl StimulusCache {
    pub(super) fn new(side: usize) -> StimulusCache {
        let capacity =
            (STIMULUS_CACHE_BYTES / (side * side * std::mem::size_of::<u32>()).max(1)).max(1);
        StimulusCache {
            images: Default::default(),
            oldest_first: Default::default(),
            capacity,
        }
    }

    /// The image of stimulus `id`, drawn by `draw` unless cached.
    pub(super) fn get_or_draw(
        &mut self,
        id: usize,
        draw: impl FnOnce() -> anyhow::Result<Vec<u32>>,
    ) -> anyhow::Result<StimulusImage> {
        if let Some(image) = self.images.get(&id) {
            return Ok(StimulusImage {
                pixels: image.clone(),
                cached: true,
            });
        }
        let image = draw()?;
        if self.oldest_first.len() >= self.capacity {
            if let Some(oldest) = self.oldest_first.pop_front() {
                self.images.remove(&oldest);
            }
        }
        self.oldest_first.push_back(id);
        self.images.insert(id, image.clone());
        Ok(StimulusImage {
            pixels: image,
            cached: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_stimulus_is_drawn_once_and_the_oldest_goes_when_the_cache_is_full() {
        let mut cache = StimulusCache {
            images: Default::default(),
            oldest_first: Default::default(),
            capacity: 2,
        };
        let draws = std::cell::Cell::new(0);
        let get = |cache: &mut StimulusCache, id: usize| {
            cache
                .get_or_draw(id, || {
                    draws.set(draws.get() + 1);
                    Ok(vec![id as u32; 4])
                })
                .map(|image| (image.pixels[0], image.cached))
        };
        assert_eq!(get(&mut cache, 7).unwrap(), (7, false));
        assert_eq!(get(&mut cache, 7).unwrap(), (7, true));
        assert_eq!(get(&mut cache, 8).unwrap(), (8, false));
        assert_eq!(get(&mut cache, 9).unwrap(), (9, false)); // full: 7 goes
        assert_eq!(get(&mut cache, 8).unwrap(), (8, true));
        assert_eq!(get(&mut cache, 7).unwrap(), (7, false));
        assert_eq!(draws.get(), 4);
        // a failed draw is an error and caches nothing
        assert!(cache
            .get_or_draw(3, || anyhow::bail!("the GPU fell over"))
            .is_err());
        assert!(!cache.images.contains_key(&3));
        // the default holds 64 images of 1024 x 1024, and at least one of any size
        assert_eq!(StimulusCache::new(1024).capacity, 64);
        assert_eq!(StimulusCache::new(1 << 14).capacity, 1);
    }
}
