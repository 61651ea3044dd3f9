//! Connectionist temporal classification (Graves et al., 2006): the negative log-likelihood of
//! a label sequence under per-frame class scores, summed over every alignment of the labels to
//! the frames (blanks between them, repeats collapsed), and its gradient with respect to the
//! scores, by the forward-backward recursion in log space.
//!
//! Written by hand because candle has no CTC loss. The gradient is computed here in closed form
//! (softmax minus the posterior occupancy of each class) and enters candle's graph as a constant
//! that multiplies the logits (see [`super::ctc_warmup`]), so no recursion is recorded there.

/// The loss of one sequence and its gradient.
#[derive(Debug, Clone)]
pub struct CtcLoss {
    /// `-log p(labels | scores)`.
    pub nll: f64,
    /// `d nll / d logits`, row-major `(frames, classes)`.
    pub grad: Vec<f32>,
}

fn log_add(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let m = a.max(b);
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// Frames needed to emit `labels`: one per label, plus a blank between equal neighbours.
pub fn min_frames(labels: &[usize]) -> usize {
    labels.len() + labels.windows(2).filter(|w| w[0] == w[1]).count()
}

/// CTC of `labels` (class indices, none equal to `blank`) under `logits`, row-major
/// `(frames, classes)`. None when no alignment exists (fewer frames than [`min_frames`]).
pub fn ctc_loss(logits: &[f32], classes: usize, labels: &[usize], blank: usize) -> Option<CtcLoss> {
    let frames = logits.len() / classes;
    if frames == 0 || frames < min_frames(labels) {
        return None;
    }
    // Log-softmax of every frame.
    let mut logp = vec![0f64; logits.len()];
    for t in 0..frames {
        let row = &logits[t * classes..(t + 1) * classes];
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let z = row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
        for (k, &x) in row.iter().enumerate() {
            logp[t * classes + k] = x as f64 - z;
        }
    }
    // The extended sequence: blank, l1, blank, l2, ..., blank.
    let ext: Vec<usize> = std::iter::once(blank)
        .chain(labels.iter().flat_map(|&l| [l, blank]))
        .collect();
    let s_len = ext.len();
    // A state may skip the blank before it when its label differs from the one two back.
    let can_skip = |s: usize| s >= 2 && ext[s] != blank && ext[s] != ext[s - 2];
    let lp = |t: usize, s: usize| logp[t * classes + ext[s]];

    let neg = f64::NEG_INFINITY;
    let mut alpha = vec![neg; frames * s_len];
    alpha[0] = lp(0, 0);
    if s_len > 1 {
        alpha[1] = lp(0, 1);
    }
    for t in 1..frames {
        for s in 0..s_len {
            let prev = &alpha[(t - 1) * s_len..t * s_len];
            let mut a = prev[s];
            if s >= 1 {
                a = log_add(a, prev[s - 1]);
            }
            if can_skip(s) {
                a = log_add(a, prev[s - 2]);
            }
            alpha[t * s_len + s] = if a == neg { neg } else { a + lp(t, s) };
        }
    }
    let last = (frames - 1) * s_len;
    let log_p = if s_len > 1 {
        log_add(alpha[last + s_len - 1], alpha[last + s_len - 2])
    } else {
        alpha[last]
    };
    if !log_p.is_finite() {
        return None;
    }

    let mut beta = vec![neg; frames * s_len];
    beta[last + s_len - 1] = lp(frames - 1, s_len - 1);
    if s_len > 1 {
        beta[last + s_len - 2] = lp(frames - 1, s_len - 2);
    }
    for t in (0..frames - 1).rev() {
        for s in 0..s_len {
            let next = &beta[(t + 1) * s_len..(t + 2) * s_len];
            let mut b = next[s];
            if s + 1 < s_len {
                b = log_add(b, next[s + 1]);
            }
            if s + 2 < s_len && can_skip(s + 2) {
                b = log_add(b, next[s + 2]);
            }
            beta[t * s_len + s] = if b == neg { neg } else { b + lp(t, s) };
        }
    }

    // d(-log p)/d logit[t, k] = softmax[t, k] - sum over states s with ext[s] = k of the
    // posterior alpha*beta / p (alpha and beta both hold frame t's own term once too many).
    let mut grad = vec![0f32; logits.len()];
    for t in 0..frames {
        let mut occupancy = vec![0f64; classes];
        for s in 0..s_len {
            let a = alpha[t * s_len + s] + beta[t * s_len + s];
            if a != neg {
                occupancy[ext[s]] += (a - lp(t, s) - log_p).exp();
            }
        }
        for k in 0..classes {
            grad[t * classes + k] = (logp[t * classes + k].exp() - occupancy[k]) as f32;
        }
    }
    Some(CtcLoss { nll: -log_p, grad })
}

/// Best-path decoding: the most likely class of each frame, repeats merged, blanks dropped.
pub fn greedy_decode(logits: &[f32], classes: usize, blank: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut prev = blank;
    for row in logits.chunks(classes) {
        let best = row
            .iter()
            .enumerate()
            .fold((blank, f32::NEG_INFINITY), |acc, (k, &x)| {
                if x > acc.1 {
                    (k, x)
                } else {
                    acc
                }
            })
            .0;
        if best != blank && best != prev {
            out.push(best);
        }
        prev = best;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The collapse of a frame path: repeats merged, then blanks removed.
    fn collapse(path: &[usize], blank: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut prev = usize::MAX;
        for &k in path {
            if k != prev && k != blank {
                out.push(k);
            }
            prev = k;
        }
        out
    }

    /// p(labels) by enumerating every path of `frames` frames.
    fn brute_force_nll(logits: &[f32], classes: usize, labels: &[usize], blank: usize) -> f64 {
        let frames = logits.len() / classes;
        let logp: Vec<Vec<f64>> = logits
            .chunks(classes)
            .map(|row| {
                let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
                row.iter().map(|&x| (x as f64).exp() / z).collect()
            })
            .collect();
        let mut total = 0.0;
        for code in 0..classes.pow(frames as u32) {
            let path: Vec<usize> = (0..frames)
                .map(|t| (code / classes.pow(t as u32)) % classes)
                .collect();
            if collapse(&path, blank) == labels {
                total += path
                    .iter()
                    .enumerate()
                    .map(|(t, &k)| logp[t][k])
                    .product::<f64>();
            }
        }
        -total.ln()
    }

    fn logits(frames: usize, classes: usize, seed: u64) -> Vec<f32> {
        let mut rng = anymal_util::rng::SplitMix64::new(seed);
        (0..frames * classes)
            .map(|_| (rng.next_f64() * 4.0 - 2.0) as f32)
            .collect()
    }

    #[test]
    fn matches_enumeration_of_every_alignment() {
        let classes = 4;
        for (labels, frames) in [
            (vec![1, 2], 5),
            (vec![1, 1], 5),
            (vec![3], 1),
            (vec![2, 2, 1], 6),
            (vec![], 3),
        ] {
            let x = logits(frames, classes, 7 + frames as u64);
            let got = ctc_loss(&x, classes, &labels, 0).unwrap().nll;
            let want = brute_force_nll(&x, classes, &labels, 0);
            assert!(
                (got - want).abs() < 1e-9 * want.abs().max(1.0),
                "{labels:?}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (classes, labels) = (5, vec![1, 3, 3, 2]);
        let x = logits(8, classes, 3);
        let g = ctc_loss(&x, classes, &labels, 0).unwrap().grad;
        let eps = 1e-3f32;
        for i in 0..x.len() {
            let mut up = x.clone();
            up[i] += eps;
            let mut down = x.clone();
            down[i] -= eps;
            let f = |v: &[f32]| ctc_loss(v, classes, &labels, 0).unwrap().nll;
            let fd = (f(&up) - f(&down)) / (2.0 * eps as f64);
            assert!(
                (fd - g[i] as f64).abs() < 2e-3,
                "logit {i}: {fd} vs {}",
                g[i]
            );
        }
    }

    #[test]
    fn too_few_frames_have_no_alignment() {
        let x = logits(2, 3, 1);
        // Two equal labels need a blank between them: 3 frames.
        assert!(ctc_loss(&x, 3, &[1, 1], 0).is_none());
        assert!(ctc_loss(&x, 3, &[1, 2], 0).is_some());
        assert_eq!(min_frames(&[1, 1, 2]), 4);
    }

    #[test]
    fn greedy_decoding_merges_repeats_and_drops_blanks() {
        // Frame winners: 1 1 0 1 2 2 0.
        let winners = [1, 1, 0, 1, 2, 2, 0];
        let x: Vec<f32> = winners
            .iter()
            .flat_map(|&w| (0..3).map(move |k| if k == w { 5.0 } else { 0.0 }))
            .collect();
        assert_eq!(greedy_decode(&x, 3, 0), vec![1, 1, 2]);
    }
}
