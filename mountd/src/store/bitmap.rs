//! A fixed-size bit set over chunk indices.

#[derive(Debug, Clone)]
pub struct Bitmap {
    words: Vec<u64>,
    len: u64,
}

impl Bitmap {
    pub fn new(len: u64) -> Bitmap {
        Bitmap {
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    /// True if any index is set.
    pub fn any(&self) -> bool {
        self.words.iter().any(|w| *w != 0)
    }

    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    pub fn set(&mut self, i: u64, value: bool) {
        let word = &mut self.words[(i / 64) as usize];
        if value {
            *word |= 1 << (i % 64);
        } else {
            *word &= !(1 << (i % 64));
        }
    }

    /// True if every index in `range` is set.
    pub fn all(&self, range: std::ops::Range<u64>) -> bool {
        range.into_iter().all(|i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_clears_and_checks_ranges() {
        let mut b = Bitmap::new(130);
        assert!(!b.get(129));
        for i in 60..70 {
            b.set(i, true);
        }
        assert!(b.all(60..70) && !b.all(59..70) && !b.all(60..71));
        b.set(64, false);
        assert!(!b.all(60..70));
        assert!(!b.get(500), "out of range reads as unset");
        assert!(b.any());
        assert!(!Bitmap::new(10).any());
    }
}
