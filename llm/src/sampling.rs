//! Choosing the next token from logits: greedy, temperature, top-k, top-p; seeded.

use rand::distr::Distribution;
use rand::SeedableRng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    /// 0 = greedy.
    pub temperature: f64,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0 = all).
    pub top_p: f64,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 299792458,
        }
    }
}

pub struct Sampler {
    cfg: SamplingConfig,
    rng: rand::rngs::StdRng,
}

impl Sampler {
    pub fn new(cfg: SamplingConfig) -> Self {
        Self {
            cfg,
            rng: rand::rngs::StdRng::seed_from_u64(cfg.seed),
        }
    }

    /// Picks a token from one position's logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.temperature <= 0.0 || self.cfg.top_k == 1 {
            return argmax(logits);
        }
        let t = self.cfg.temperature as f32;
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        // Sort descending by logit (stable: ties keep the lower id first).
        idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        if self.cfg.top_k > 0 && self.cfg.top_k < idx.len() {
            idx.truncate(self.cfg.top_k);
        }
        let max = logits[idx[0] as usize];
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| (((logits[i as usize] - max) / t) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (n, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.cfg.top_p {
                    keep = n + 1;
                    break;
                }
            }
            probs.truncate(keep);
            idx.truncate(keep);
        }
        match rand::distr::weighted::WeightedIndex::new(&probs) {
            Ok(d) => idx[d.sample(&mut self.rng)],
            Err(_) => idx[0],
        }
    }
}

pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in xs.iter().enumerate() {
        if *v > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_truncations() {
        let logits = [0.1f32, 3.0, 2.9, -1.0];
        let mut g = Sampler::new(SamplingConfig::default());
        assert_eq!(g.sample(&logits), 1);
        // top-k 2 never yields tokens 0 or 3.
        let mut s = Sampler::new(SamplingConfig {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 1,
        });
        let picks: Vec<u32> = (0..200).map(|_| s.sample(&logits)).collect();
        assert!(picks.iter().all(|&p| p == 1 || p == 2));
        assert!(picks.contains(&1) && picks.contains(&2));
        // top-p 0.3 keeps only the most likely token.
        let mut s = Sampler::new(SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.3,
            seed: 1,
        });
        assert!((0..50).all(|_| s.sample(&logits) == 1));
        // Same seed, same draws.
        let cfg = SamplingConfig {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            seed: 7,
        };
        let (mut a, mut b) = (Sampler::new(cfg), Sampler::new(cfg));
        let da: Vec<u32> = (0..20).map(|_| a.sample(&logits)).collect();
        let db: Vec<u32> = (0..20).map(|_| b.sample(&logits)).collect();
        assert_eq!(da, db);
    }
}
