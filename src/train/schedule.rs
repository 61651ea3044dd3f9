//! Learning-rate schedule: linear warm-up from 0, then cosine decay to `min_lr_ratio * lr`.

/// Learning rate for optimizer step `step` (0-based) of `total`.
pub fn lr_at(step: u64, total: u64, base: f64, warmup: u64, min_ratio: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup.min(step)) as f64 / decay_steps as f64).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    base * (min_ratio + (1.0 - min_ratio) * cosine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays() {
        assert!((lr_at(0, 100, 1.0, 10, 0.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 1.0, 10, 0.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 1.0, 10, 0.0) - 1.0).abs() < 1e-12);
        // Halfway through the decay: half the range.
        assert!((lr_at(55, 100, 1.0, 10, 0.2) - 0.6).abs() < 1e-9);
        assert!((lr_at(100, 100, 1.0, 10, 0.2) - 0.2).abs() < 1e-9);
        // No warm-up.
        assert!((lr_at(0, 10, 2.0, 0, 0.0) - 2.0).abs() < 1e-12);
    }
}
