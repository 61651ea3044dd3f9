//! Stop sequences on streamed text. Tokens arrive as text pieces and a stop string can straddle
//! two of them, so the tail of the text that could still grow into a stop string is held back
//! until the next piece says whether it does: a streaming client never sees a stop string or a
//! part of one, and the streamed text equals the non-streamed one.

pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released (a possible start of a stop string).
    pending: String,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would stop before the first token).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Adds a piece; returns the text that can be released, and whether a stop string was
    /// found (the text before it is released, the stop string and what follows are dropped;
    /// generation should end).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stops.is_empty() {
            return (piece.to_string(), false);
        }
        self.pending.push_str(piece);
        if let Some(i) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..i].to_string();
            self.pending.clear();
            return (out, true);
        }
        // The earliest position from which the rest is a (proper) prefix of a stop string.
        let hold = (0..self.pending.len())
            .filter(|&i| self.pending.is_char_boundary(i))
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.pending[i..])))
            .unwrap_or(self.pending.len());
        (self.pending.drain(..hold).collect(), false)
    }

    /// The held-back text at the end of generation (no stop string followed it).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (t, hit) = m.push(p);
            out.push_str(&t);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stops_within_and_across_pieces_and_holds_only_prefixes() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(
            run(&["END"], &["abc", "dEN", "Dxyz"]),
            ("abcd".into(), true)
        );
        assert_eq!(
            run(&["\n\n", "."], &["Hi", " there", ". More"]),
            ("Hi there".into(), true)
        );
        // A prefix that does not complete is released at the end.
        assert_eq!(run(&["END"], &["abcE", "N"]), ("abcEN".into(), false));
        // Held text is released as soon as it cannot start a stop string.
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("abE"), ("ab".into(), false));
        assert_eq!(m.push("x"), ("Ex".into(), false));
        // Multi-byte text is cut at character boundaries.
        assert_eq!(
            run(&["é!"], &["caf", "é", "!", "rest"]),
            ("caf".into(), true)
        );
        assert_eq!(run(&[""], &["a"]), ("a".into(), false));
    }
}
