//! Numbers opted out while their calls may already wait in this shard: the scheduler announces
//! each new do-not-call entry on every dispatch partition (a `suppress` message), and a shard
//! checks its calls against these before it journals and dials them. An entry is kept until its
//! `until` (the dispatch TTL after the announcement: a message dispatched before the opt-out has
//! expired by then, and later ones were screened at their claim). Pure; bounded by `max`.

use std::collections::HashMap;

use uuid::Uuid;

/// The opt-outs a shard knows of.
#[derive(Debug)]
pub struct Suppressions {
    /// Number → (list: nil = every campaign, else that campaign; until, Unix ms).
    by_number: HashMap<String, Vec<(Uuid, u64)>>,
    max: usize,
}

impl Suppressions {
    pub fn new(max: usize) -> Suppressions {
        Suppressions { by_number: HashMap::new(), max: max.max(1) }
    }

    /// Remembers an opt-out; forgets lapsed ones when full, then the soonest to lapse.
    pub fn add(&mut self, number: &str, list: Uuid, until_ms: u64, now_ms: u64) {
        if self.by_number.len() >= self.max && !self.by_number.contains_key(number) {
            self.forget_lapsed(now_ms);
        }
        if self.by_number.len() >= self.max && !self.by_number.contains_key(number) {
            let soonest = self
                .by_number
                .iter()
                .min_by_key(|(_, v)| v.iter().map(|(_, u)| *u).max().unwrap_or(0))
                .map(|(k, _)| k.clone());
            if let Some(k) = soonest {
                self.by_number.remove(&k);
            }
        }
        let lists = self.by_number.entry(number.to_string()).or_default();
        match lists.iter_mut().find(|(l, _)| *l == list) {
            Some(slot) => slot.1 = slot.1.max(until_ms),
            None => lists.push((list, until_ms)),
        }
    }

    /// Whether a call of `campaign` to `number` must not be dialled at `now_ms`.
    pub fn blocks(&self, number: &str, campaign: Uuid, now_ms: u64) -> bool {
        if self.by_number.is_empty() {
            return false;
        }
        self.by_number
            .get(number)
            .is_some_and(|v| v.iter().any(|(list, until)| *until > now_ms && (list.is_nil() || *list == campaign)))
    }

    fn forget_lapsed(&mut self, now_ms: u64) {
        self.by_number.retain(|_, v| {
            v.retain(|(_, until)| *until > now_ms);
            !v.is_empty()
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_number.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_number.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_global_opt_out_blocks_every_campaign_a_campaign_one_only_its_own() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut s = Suppressions::new(10);
        s.add("+15555550001", Uuid::nil(), 1_000, 0);
        s.add("+15555550002", a, 1_000, 0);
        assert!(s.blocks("+15555550001", a, 10) && s.blocks("+15555550001", b, 10));
        assert!(s.blocks("+15555550002", a, 10));
        assert!(!s.blocks("+15555550002", b, 10));
        assert!(!s.blocks("+15555550003", a, 10));
        assert!(!s.blocks("+15555550001", a, 1_000), "lapsed");
    }

    #[test]
    fn stays_bounded_forgetting_lapsed_entries_first() {
        let mut s = Suppressions::new(2);
        s.add("+1", Uuid::nil(), 100, 0);
        s.add("+2", Uuid::nil(), 5_000, 0);
        s.add("+3", Uuid::nil(), 5_000, 200);
        assert_eq!(s.len(), 2);
        assert!(
            !s.blocks("+1", Uuid::nil(), 200) && s.blocks("+2", Uuid::nil(), 200) && s.blocks("+3", Uuid::nil(), 200)
        );
        s.add("+4", Uuid::nil(), 9_000, 300);
        assert_eq!(s.len(), 2, "none lapsed: the soonest to lapse goes");
        assert!(s.blocks("+4", Uuid::nil(), 300));
    }
}
