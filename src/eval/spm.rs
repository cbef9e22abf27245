//! SentencePiece-style tokenization from GGUF metadata, as llama.cpp does it
//! (src/llama-vocab.cpp, `llm_tokenizer_spm_session`): start from UTF-8 characters, repeatedly
//! merge the adjacent pair whose joined text is the vocabulary token with the highest score
//! (leftmost on ties), and spell anything left outside the vocabulary as `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use anyhow::{bail, Result};

pub struct SpmTokenizer {
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    add_space_prefix: bool,
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: isize,
    next: isize,
}

struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    len: usize,
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
    /// Highest score first; on equal scores the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

impl SpmTokenizer {
    pub fn new(
        tokens: Vec<String>,
        scores: Vec<f32>,
        _types: Vec<i32>,
        add_space_prefix: bool,
    ) -> Result<Self> {
        if scores.len() != tokens.len() {
            bail!(
                "{} tokens but {} scores in the vocabulary",
                tokens.len(),
                scores.len()
            );
        }
        let ids = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        Ok(SpmTokenizer {
            ids,
            scores,
            add_space_prefix,
        })
    }

    /// Whether the vocabulary prefixes a space to text (to the start, and after every token
    /// cut out of the text before tokenizing).
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// Appends the ids of `text`, with a space in front when `space_prefix`.
    pub fn encode(&self, text: &str, space_prefix: bool, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut escaped = String::with_capacity(text.len() + 3);
        if space_prefix {
            escaped.push('\u{2581}');
        }
        escaped.push_str(&text.replace(' ', "\u{2581}"));
        let text = escaped.as_str();

        let mut symbols: Vec<Symbol> = Vec::new();
        for (i, (start, ch)) in text.char_indices().enumerate() {
            let end = start + ch.len_utf8();
            symbols.push(Symbol {
                start,
                len: ch.len_utf8(),
                prev: i as isize - 1,
                next: if end == text.len() {
                    -1
                } else {
                    i as isize + 1
                },
            });
        }
        let mut queue = BinaryHeap::new();
        let mut rev_merge: HashMap<String, (usize, usize)> = HashMap::new();
        let try_add = |symbols: &[Symbol],
                       queue: &mut BinaryHeap<Bigram>,
                       rev: &mut HashMap<String, (usize, usize)>,
                       left: isize,
                       right: isize| {
            if left < 0 || right < 0 {
                return;
            }
            let (l, r) = (symbols[left as usize], symbols[right as usize]);
            let joined = &text[l.start..l.start + l.len + r.len];
            if let Some(&id) = self.ids.get(joined) {
                queue.push(Bigram {
                    left: left as usize,
                    right: right as usize,
                    score: self.scores[id as usize],
                    len: joined.len(),
                });
                rev.insert(joined.to_string(), (left as usize, right as usize));
            }
        };
        for i in 1..symbols.len() {
            try_add(
                &symbols,
                &mut queue,
                &mut rev_merge,
                i as isize - 1,
                i as isize,
            );
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            // Skip pairs made stale by an earlier merge.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
                continue;
            }
            symbols[b.left].len += r.len;
            symbols[b.right].len = 0;
            symbols[b.left].next = r.next;
            if r.next >= 0 {
                symbols[r.next as usize].prev = b.left as isize;
            }
            let left = symbols[b.left];
            try_add(
                &symbols,
                &mut queue,
                &mut rev_merge,
                left.prev,
                b.left as isize,
            );
            try_add(
                &symbols,
                &mut queue,
                &mut rev_merge,
                b.left as isize,
                left.next,
            );
        }
        let mut i = 0isize;
        while i != -1 {
            let s = symbols[i as usize];
            self.resegment(text, &symbols, &rev_merge, s, out);
            i = s.next;
        }
    }

    fn resegment(
        &self,
        text: &str,
        symbols: &[Symbol],
        rev_merge: &HashMap<String, (usize, usize)>,
        s: Symbol,
        out: &mut Vec<u32>,
    ) {
        let piece = &text[s.start..s.start + s.len];
        if let Some(&id) = self.ids.get(piece) {
            out.push(id);
            return;
        }
        match rev_merge.get(piece) {
            Some(&(l, r)) => {
                self.resegment(text, symbols, rev_merge, symbols[l], out);
                self.resegment(text, symbols, rev_merge, symbols[r], out);
            }
            None => {
                for byte in piece.bytes() {
                    let id = self
                        .ids
                        .get(&format!("<0x{byte:02X}>"))
                        .or_else(|| self.ids.get(&(byte as char).to_string()))
                        .copied()
                        .unwrap_or(0);
                    out.push(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> SpmTokenizer {
        let entries: [(&str, f32); 10] = [
            ("<unk>", 0.0),
            ("\u{2581}", -1.0),
            ("h", -2.0),
            ("i", -2.0),
            ("\u{2581}h", -1.5),
            ("\u{2581}hi", -0.5),
            ("hi", -3.0),
            ("<0x21>", 0.0),
            ("x", -2.0),
            ("<0xC3>", 0.0),
        ];
        SpmTokenizer::new(
            entries.iter().map(|e| e.0.to_string()).collect(),
            entries.iter().map(|e| e.1).collect(),
            vec![1; entries.len()],
            true,
        )
        .unwrap()
    }

    #[test]
    fn merges_by_score_and_falls_back_to_bytes() {
        let mut out = Vec::new();
        vocab().encode("hi!", true, &mut out);
        // "▁hi" by merges, then "!" as its byte token.
        assert_eq!(out, vec![5, 7]);
        out.clear();
        vocab().encode("hi hx", true, &mut out);
        assert_eq!(out, vec![5, 4, 8]);
    }
}
