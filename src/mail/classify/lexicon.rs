//! Lexicon: many phrases, one pass.

/// A set of lower-case phrases matched in one left-to-right pass: candidates are
/// indexed by their first byte, so each position of the text costs a table look-up
/// and a few `starts_with`. A trailing '*' in a pattern means "prefix" (no word
/// boundary after it); otherwise Latin-letter patterns need word boundaries on
/// both sides, and CJK patterns (no spaces between words) need none.
///
/// Labels are text (a language, a format) or a typed value such as a bounce reason,
/// so that what a phrase means is never read back from a string.
pub(super) struct Lexicon<L: Copy + 'static = &'static str> {
    entries: Vec<Entry<L>>,
    by_first: Vec<Vec<u16>>,
}

struct Entry<L> {
    pattern: &'static str,
    label: L,
    lead: bool,
    trail: bool,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Hit<L: Copy = &'static str> {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) pattern: &'static str,
    pub(super) label: L,
}

pub(super) fn is_latin_word_char(c: char) -> bool {
    c.is_alphanumeric() && (c as u32) < 0x250
}

impl<L: Copy + 'static> Lexicon<L> {
    pub(super) fn new(table: &'static [(&'static str, L)]) -> Lexicon<L> {
        let mut by_first = vec![Vec::new(); 256];
        let mut entries = Vec::with_capacity(table.len());
        for (idx, (raw, label)) in table.iter().enumerate() {
            let prefix = raw.ends_with('*');
            let pattern = raw.trim_end_matches('*');
            let first = pattern.chars().next().is_some_and(is_latin_word_char);
            let last = pattern.chars().next_back().is_some_and(is_latin_word_char);
            entries.push(Entry {
                pattern,
                label: *label,
                lead: first,
                trail: last && !prefix,
            });
            if let Some(&b) = pattern.as_bytes().first() {
                by_first[usize::from(b)].push(idx as u16);
            }
        }
        Lexicon { entries, by_first }
    }

    fn matches_at(&self, hay: &str, i: usize) -> Option<Hit<L>> {
        let b = hay.as_bytes();
        let candidates = &self.by_first[usize::from(b[i])];
        if candidates.is_empty() {
            return None;
        }
        // Longest match at this position wins ("out of the office" over "out of").
        let mut best: Option<Hit<L>> = None;
        for &idx in candidates {
            let e = &self.entries[usize::from(idx)];
            if !b[i..].starts_with(e.pattern.as_bytes()) {
                continue;
            }
            let end = i + e.pattern.len();
            if e.lead && hay[..i].chars().next_back().is_some_and(is_latin_word_char) {
                continue;
            }
            if e.trail && hay[end..].chars().next().is_some_and(is_latin_word_char) {
                continue;
            }
            if best.is_none_or(|h| h.end < end) {
                best = Some(Hit {
                    start: i,
                    end,
                    pattern: e.pattern,
                    label: e.label,
                });
            }
        }
        best
    }

    /// The first match in `hay`.
    pub(super) fn first(&self, hay: &str) -> Option<Hit<L>> {
        (0..hay.len()).find_map(|i| self.matches_at(hay, i))
    }

    /// A match at the very start of `hay`.
    pub(super) fn at_start(&self, hay: &str) -> Option<Hit<L>> {
        if hay.is_empty() {
            None
        } else {
            self.matches_at(hay, 0)
        }
    }

    /// All non-overlapping matches, left to right.
    pub(super) fn find_all(&self, hay: &str) -> Vec<Hit<L>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < hay.len() {
            match self.matches_at(hay, i) {
                Some(h) => {
                    i = h.end;
                    out.push(h);
                }
                None => i += 1,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexicon_respects_word_boundaries() {
        static T: &[(&str, &str)] = &[("remove me", "u"), ("unsubscrib*", "u"), ("退订", "u")];
        let lx = Lexicon::new(T);
        assert!(lx.first("please remove me now").is_some());
        assert!(lx.first("please remove meat").is_none());
        assert!(lx.first("xremove me").is_none());
        assert!(lx.first("unsubscribing now").is_some());
        assert!(lx.first("我要退订谢谢").is_some());
    }
}
