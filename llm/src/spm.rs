//! SentencePiece-style tokenization from GGUF vocabularies (`tokenizer.ggml.model = "llama"`),
//! as llama.cpp does it: spaces become U+2581, the text is split into characters, and the
//! adjacent pair whose concatenation is the highest-scoring vocabulary entry is merged until
//! none is left; pieces not in the vocabulary fall back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

pub const SPACE: char = '\u{2581}';

pub struct SpmModel {
    pub pieces: Vec<String>,
    scores: Vec<f32>,
    index: HashMap<String, u32>,
    byte_tokens: [Option<u32>; 256],
    unk: Option<u32>,
}

#[derive(Debug)]
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    // Highest score first; on ties the leftmost pair first.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl SpmModel {
    pub fn new(pieces: Vec<String>, scores: Vec<f32>, unk: Option<u32>) -> Self {
        let mut index = HashMap::with_capacity(pieces.len());
        for (i, p) in pieces.iter().enumerate() {
            index.entry(p.clone()).or_insert(i as u32);
        }
        let mut byte_tokens = [None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = index.get(&format!("<0x{b:02X}>")).copied();
        }
        Self {
            pieces,
            scores,
            index,
            byte_tokens,
            unk,
        }
    }

    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.index.get(piece).copied()
    }

    /// Bytes a piece stands for: U+2581 as a space, `<0xXX>` as that byte.
    pub fn piece_bytes(&self, id: u32) -> Vec<u8> {
        let Some(p) = self.pieces.get(id as usize) else {
            return vec![];
        };
        if let Some(b) = p.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')) {
            if b.len() == 2 {
                if let Ok(v) = u8::from_str_radix(b, 16) {
                    return vec![v];
                }
            }
        }
        p.replace(SPACE, " ").into_bytes()
    }

    /// Tokenizes raw text (no special-token handling; spaces not yet escaped).
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let text = text.replace(' ', &SPACE.to_string());
        if text.is_empty() {
            return;
        }
        let mut symbols: Vec<Symbol> = Vec::new();
        for (i, (start, ch)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start,
                len: ch.len_utf8(),
                prev: i.checked_sub(1),
                next: Some(i + 1),
            });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = None;
        }
        let mut queue = BinaryHeap::new();
        let try_add = |queue: &mut BinaryHeap<Bigram>, symbols: &[Symbol], l: usize, r: usize| {
            let (a, b) = (symbols[l], symbols[r]);
            let s = &text[a.start..b.start + b.len];
            if let Some(&id) = self.index.get(s) {
                queue.push(Bigram {
                    left: l,
                    right: r,
                    score: self.scores[id as usize],
                    size: s.len(),
                });
            }
        };
        for i in 1..symbols.len() {
            try_add(&mut queue, &symbols, i - 1, i);
        }
        while let Some(bg) = queue.pop() {
            let (l, r) = (symbols[bg.left], symbols[bg.right]);
            // Stale entry: one side was merged away since it was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != bg.size {
                continue;
            }
            symbols[bg.left].len += r.len;
            symbols[bg.left].next = r.next;
            symbols[bg.right].len = 0;
            if let Some(n) = r.next {
                symbols[n].prev = Some(bg.left);
            }
            if let Some(p) = symbols[bg.left].prev {
                try_add(&mut queue, &symbols, p, bg.left);
            }
            if let Some(n) = symbols[bg.left].next {
                try_add(&mut queue, &symbols, bg.left, n);
            }
        }
        let mut i = Some(0);
        while let Some(idx) = i {
            let s = symbols[idx];
            self.resegment(&text[s.start..s.start + s.len], out);
            i = s.next;
        }
    }

    /// A merged piece is always in the vocabulary; a single character may not be: then its UTF-8
    /// bytes become byte tokens (or `<unk>` when the vocabulary has none).
    fn resegment(&self, piece: &str, out: &mut Vec<u32>) {
        if let Some(&id) = self.index.get(piece) {
            out.push(id);
            return;
        }
        for b in piece.bytes() {
            if let Some(id) = self.byte_tokens[b as usize].or(self.unk) {
                out.push(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> SpmModel {
        let pieces: Vec<String> = [
            "<unk>", "▁", "h", "e", "l", "o", "he", "ll", "hell", "hello", "▁hello", "<0x21>",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let scores = vec![
            0.0, -1.0, -5.0, -5.0, -5.0, -5.0, -2.0, -2.5, -1.5, -1.0, -0.5, 0.0,
        ];
        SpmModel::new(pieces, scores, Some(0))
    }

    #[test]
    fn merges_by_score_and_falls_back_to_bytes() {
        let m = model();
        let mut out = vec![];
        m.encode(" hello!", &mut out);
        // "▁hello" is one piece; "!" is not in the vocabulary but its byte token is.
        assert_eq!(out, vec![10, 11]);
        let mut out = vec![];
        m.encode("hel", &mut out);
        // he (-2.0) beats ll is impossible (only one l): he + l.
        assert_eq!(out, vec![6, 4]);
        assert_eq!(m.piece_bytes(10), b" hello".to_vec());
        assert_eq!(m.piece_bytes(11), vec![0x21]);
    }
}
