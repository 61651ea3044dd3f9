//! The item order of training: a seeded shuffle per epoch, so that the items of optimizer
//! step `s` depend only on `s` and the seed (exact resume).

use anymal_util::rng::{fnv1a, SplitMix64};

/// Item order: epoch `e` is a Fisher-Yates shuffle seeded by `(seed, e)`; item `j` of the
/// endless stream is position `j % n` of epoch `j / n`.
pub struct DataOrder {
    n: usize,
    seed: u64,
    cache: std::cell::RefCell<(usize, Vec<usize>)>,
}

impl DataOrder {
    pub fn new(n: usize, seed: u64) -> Self {
        Self {
            n,
            seed,
            cache: std::cell::RefCell::new((usize::MAX, Vec::new())),
        }
    }

    pub fn item(&self, j: usize) -> usize {
        let epoch = j / self.n;
        let mut c = self.cache.borrow_mut();
        if c.0 != epoch {
            let mut perm: Vec<usize> = (0..self.n).collect();
            let mut rng = SplitMix64::new(self.seed ^ fnv1a(format!("epoch-{epoch}").as_bytes()));
            for i in (1..self.n).rev() {
                let k = (rng.next_u64() % (i as u64 + 1)) as usize;
                perm.swap(i, k);
            }
            *c = (epoch, perm);
        }
        c.1[j % self.n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_order_is_a_seeded_permutation_per_epoch() {
        let o = DataOrder::new(10, 3);
        let e0: Vec<usize> = (0..10).map(|j| o.item(j)).collect();
        let e1: Vec<usize> = (10..20).map(|j| o.item(j)).collect();
        let mut s = e0.clone();
        s.sort();
        assert_eq!(s, (0..10).collect::<Vec<_>>());
        assert_ne!(e0, e1);
        let o2 = DataOrder::new(10, 3);
        assert_eq!(
            (0..20).map(|j| o2.item(j)).collect::<Vec<_>>(),
            [e0, e1].concat()
        );
    }
}
