//! A set of chunk indices, kept as disjoint runs.
//!
//! Memory grows with how fragmented the fetched data is (one entry per run), never with
//! the size the remote declared: a remote may claim any size up to `i64::MAX`, and a set
//! sized by it (a bitmap was) let one hostile server make the root daemon allocate
//! terabytes and abort. Every operation is O(log runs) plus the runs it touches.

use std::collections::BTreeMap;
use std::ops::Range;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkSet {
    /// Run start -> run end (exclusive). Runs are disjoint and never touch: inserting
    /// next to a run extends it.
    runs: BTreeMap<u64, u64>,
}

impl ChunkSet {
    /// True if any index is in the set.
    pub fn any(&self) -> bool {
        !self.runs.is_empty()
    }

    /// The run holding `i`, if any.
    fn run_of(&self, i: u64) -> Option<(u64, u64)> {
        let (&start, &end) = self.runs.range(..=i).next_back()?;
        (i < end).then_some((start, end))
    }

    /// The end of the run holding `i`, if `i` is in the set.
    pub fn run_end(&self, i: u64) -> Option<u64> {
        self.run_of(i).map(|(_, end)| end)
    }

    pub fn contains(&self, i: u64) -> bool {
        self.run_of(i).is_some()
    }

    /// True if every index of `range` is in the set (an empty range: true).
    pub fn contains_all(&self, range: Range<u64>) -> bool {
        range.is_empty()
            || self
                .run_of(range.start)
                .is_some_and(|(_, end)| end >= range.end)
    }

    /// How many indices of `range` are in the set.
    pub fn count_in(&self, range: Range<u64>) -> u64 {
        if range.is_empty() {
            return 0;
        }
        let from = self
            .run_of(range.start)
            .map_or(range.start, |(start, _)| start);
        self.runs
            .range(from..range.end)
            .map(|(&s, &e)| e.min(range.end).saturating_sub(s.max(range.start)))
            .sum()
    }

    pub fn insert(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let (mut start, mut end) = (range.start, range.end);
        if let Some((&s, &e)) = self.runs.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
        }
        let touched: Vec<u64> = self.runs.range(start..=end).map(|(&s, _)| s).collect();
        for s in touched {
            if let Some(e) = self.runs.remove(&s) {
                end = end.max(e);
            }
        }
        self.runs.insert(start, end);
    }

    pub fn remove(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        if let Some((&s, &e)) = self.runs.range(..range.start).next_back()
            && e > range.start
        {
            self.runs.insert(s, range.start);
            if e > range.end {
                self.runs.insert(range.end, e);
            }
        }
        let inside: Vec<u64> = self
            .runs
            .range(range.start..range.end)
            .map(|(&s, _)| s)
            .collect();
        for s in inside {
            if let Some(e) = self.runs.remove(&s)
                && e > range.end
            {
                self.runs.insert(range.end, e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn holds_runs_whatever_the_declared_size() {
        let mut set = ChunkSet::default();
        set.insert(u64::MAX - 10..u64::MAX);
        set.insert(0..2);
        assert!(set.contains(u64::MAX - 1) && set.contains(1) && !set.contains(2));
        assert_eq!(set.runs.len(), 2);
        set.insert(2..5);
        assert_eq!(set.runs.len(), 2, "adjacent runs merge");
        set.remove(1..3);
        assert_eq!(
            set.runs,
            BTreeMap::from([(0, 1), (3, 5), (u64::MAX - 10, u64::MAX)])
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        Insert(Range<u64>),
        Remove(Range<u64>),
    }

    fn step() -> impl Strategy<Value = Step> {
        (any::<bool>(), 0u64..200, 0u64..40).prop_map(|(insert, start, len)| {
            let range = start..start + len;
            if insert {
                Step::Insert(range)
            } else {
                Step::Remove(range)
            }
        })
    }

    proptest! {
        #![proptest_config(crate::proptest_config(256))]

        /// Against a plain set of indices: every query agrees after any sequence of changes.
        #[test]
        fn agrees_with_a_set_of_indices(steps in proptest::collection::vec(step(), 0..40), query in 0u64..240, len in 0u64..40) {
            let mut set = ChunkSet::default();
            let mut model = BTreeSet::new();
            for step in steps {
                match step {
                    Step::Insert(r) => { model.extend(r.clone()); set.insert(r) }
                    Step::Remove(r) => { r.clone().for_each(|i| { model.remove(&i); }); set.remove(r) }
                }
            }
            let range = query..query + len;
            prop_assert_eq!(set.contains(query), model.contains(&query));
            prop_assert_eq!(set.contains_all(range.clone()), range.clone().all(|i| model.contains(&i)));
            prop_assert_eq!(set.count_in(range.clone()), range.clone().filter(|i| model.contains(i)).count() as u64);
            prop_assert_eq!(set.any(), !model.is_empty());
            // Runs stay disjoint and never touch.
            let runs: Vec<(u64, u64)> = set.runs.iter().map(|(&s, &e)| (s, e)).collect();
            prop_assert!(runs.iter().all(|(s, e)| s < e));
            prop_assert!(runs.windows(2).all(|w| w[0].1 < w[1].0));
        }
    }
}
