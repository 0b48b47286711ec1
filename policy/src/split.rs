//! Weighted backend choice for traffic splits (`api-v1` 90 / `api-v2` 10).
//!
//! Weights are integers; a backend of weight 0 is never chosen (it drains). A choice is one
//! random number and a binary search over the cumulative weights.

/// Items with weights, ready to be chosen from.
#[derive(Clone, Debug)]
pub struct WeightedSplit<T> {
    items: Vec<T>,
    /// Cumulative weights: `cumulative[i]` is the sum of weights `0..=i`.
    cumulative: Vec<u64>,
}

impl<T> WeightedSplit<T> {
    /// A split over `(item, weight)` pairs.
    pub fn new(weighted: impl IntoIterator<Item = (T, u32)>) -> Self {
        let mut items = Vec::new();
        let mut cumulative = Vec::new();
        let mut total = 0u64;
        for (item, weight) in weighted {
            total += u64::from(weight);
            items.push(item);
            cumulative.push(total);
        }
        Self { items, cumulative }
    }

    /// The sum of the weights.
    pub fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Every item, in order, with its weight.
    pub fn items(&self) -> impl Iterator<Item = (&T, u64)> {
        let mut prev = 0;
        self.items
            .iter()
            .zip(&self.cumulative)
            .map(move |(item, &c)| {
                let w = c - prev;
                prev = c;
                (item, w)
            })
    }

    /// The item a uniformly random `r` in `0..total()` selects; `None` when every weight is 0.
    pub fn pick(&self, r: u64) -> Option<&T> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let r = r % total;
        // The first item whose cumulative weight exceeds r; weight-0 items share their
        // predecessor's cumulative value and so are never the first to exceed it.
        let i = self.cumulative.partition_point(|&c| c <= r);
        self.items.get(i)
    }

    /// Chooses an item with probability weight / total.
    pub fn choose(&self, rng: &mut fastrand::Rng) -> Option<&T> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        self.pick(rng.u64(0..total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_weights_drain_and_empty_splits_choose_nothing() {
        let s = WeightedSplit::new([("a", 0), ("b", 3), ("c", 0), ("d", 1)]);
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            let c = *s.choose(&mut rng).unwrap();
            assert!(c == "b" || c == "d", "{c}");
        }
        assert_eq!(WeightedSplit::new([("a", 0)]).choose(&mut rng), None);
        assert_eq!(WeightedSplit::<&str>::new([]).choose(&mut rng), None);
        let weights: Vec<u64> = s.items().map(|(_, w)| w).collect();
        assert_eq!(weights, vec![0, 3, 0, 1]);
    }

    #[test]
    fn pick_is_exact_over_the_whole_range() {
        let s = WeightedSplit::new([(0usize, 2), (1, 0), (2, 3)]);
        let picks: Vec<usize> = (0..5).map(|r| *s.pick(r).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 2, 2, 2]);
    }

    /// Property: for random weight vectors (with zeros) and random seeds, the observed share
    /// of every backend converges to weight / total, within 5 standard deviations.
    #[test]
    fn choices_converge_to_weights() {
        let mut meta = fastrand::Rng::with_seed(0x5eed);
        for case in 0..200 {
            let n = meta.usize(1..8);
            let mut weights: Vec<u32> = (0..n)
                .map(|_| {
                    if meta.u8(0..5) == 0 {
                        0
                    } else {
                        meta.u32(1..1000)
                    }
                })
                .collect();
            if weights.iter().all(|&w| w == 0) {
                weights[0] = 1;
            }
            let split = WeightedSplit::new(weights.iter().copied().enumerate());
            let seed = meta.u64(..);
            let mut rng = fastrand::Rng::with_seed(seed);
            let draws = 20_000u32;
            let mut counts = vec![0u32; n];
            for _ in 0..draws {
                counts[*split.choose(&mut rng).unwrap()] += 1;
            }
            let total: u32 = weights.iter().sum();
            for (i, (&w, &c)) in weights.iter().zip(&counts).enumerate() {
                let p = f64::from(w) / f64::from(total);
                let observed = f64::from(c) / f64::from(draws);
                let sigma = (p * (1.0 - p) / f64::from(draws)).sqrt();
                assert!(
                    (observed - p).abs() <= 5.0 * sigma + 1e-9,
                    "case {case} seed {seed}: backend {i} weight {w}/{total}: expected {p:.4}, observed {observed:.4}"
                );
                if w == 0 {
                    assert_eq!(c, 0, "case {case}: a weight-0 backend was chosen");
                }
            }
        }
    }
}
