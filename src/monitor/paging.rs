//! Paging through the registry: keyset pages in age order (O(log n + limit) under a short
//! lock), and value-sorted pages that copy the live entries out in chunks and sort outside the
//! lock (O(n) per page, never blocking the message path).

use std::ops::Bound;
use std::sync::Arc;

use super::entry::ConnectionEntry;
use super::registry::Registry;

/// Orderings offered by [`Registry::page`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    /// Oldest connection first (keyset-paginated: O(log n + limit)).
    #[default]
    Oldest,
    /// Newest connection first (keyset-paginated).
    Newest,
    /// Most messages received first.
    Messages,
    /// Longest idle first.
    Idle,
    /// Deepest outbound queue first.
    Queue,
}

/// A page request. `cursor` is the opaque `next_cursor` of the previous page.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub limit: usize,
    pub cursor: Option<String>,
    pub client_id: Option<String>,
    /// Case-insensitive substring of the client id or address (a scan; see [`Registry::page`]).
    pub search: Option<String>,
    pub sort: SortKey,
}

/// A page of connections and the cursor of the next one (`None` at the end).
pub struct Page {
    pub items: Vec<Arc<ConnectionEntry>>,
    pub next_cursor: Option<String>,
}

/// The cursor could not be parsed or does not belong to the requested sort.
#[derive(Debug, thiserror::Error)]
#[error("invalid cursor")]
pub struct InvalidCursor;

impl Registry {
    /// One page of connections. Age orderings are keyset-paginated under a short lock;
    /// the others copy the candidates out in chunks (the lock is released between chunks),
    /// then sort outside the lock, so their cost is O(n) per page but never blocks the
    /// message path.
    pub fn page(&self, req: &PageRequest) -> Result<Page, InvalidCursor> {
        let limit = req.limit.max(1);
        let searching = req.search.as_deref().is_some_and(|s| !s.is_empty());
        match req.sort {
            SortKey::Oldest | SortKey::Newest if !searching => self.page_by_age(req, limit),
            _ => self.page_by_value(req, limit),
        }
    }

    fn page_by_age(&self, req: &PageRequest, limit: usize) -> Result<Page, InvalidCursor> {
        let after = match &req.cursor {
            None => None,
            Some(c) => Some(parse_cursor(c, 's')?),
        };
        let newest = req.sort == SortKey::Newest;
        let range = match (after, newest) {
            (None, _) => (Bound::Unbounded, Bound::Unbounded),
            (Some(s), false) => (Bound::Excluded(s), Bound::Unbounded),
            (Some(s), true) => (Bound::Unbounded, Bound::Excluded(s)),
        };
        let index = self.lock();
        let seqs: Vec<u64> = match &req.client_id {
            Some(client) => match index.by_client.get(client) {
                None => Vec::new(),
                Some(set) => take_range(set.range(range), newest, limit + 1),
            },
            None => take_range(index.by_seq.range(range).map(|(k, _)| k), newest, limit + 1),
        };
        let mut items: Vec<_> = seqs
            .iter()
            .filter_map(|s| index.by_seq.get(s).cloned())
            .collect();
        drop(index);
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|e| format!("s{}", e.seq))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    fn page_by_value(&self, req: &PageRequest, limit: usize) -> Result<Page, InvalidCursor> {
        let offset = match &req.cursor {
            None => 0,
            Some(c) => parse_cursor(c, 'o')? as usize,
        };
        let mut all = match &req.client_id {
            Some(client) => self.by_client(client),
            None => self.scan_all(),
        };
        if let Some(needle) = req.search.as_deref().filter(|s| !s.is_empty()) {
            let needle = needle.to_lowercase();
            all.retain(|e| {
                let info = e.info();
                info.client_id.to_lowercase().contains(&needle)
                    || info
                        .address
                        .is_some_and(|a| a.to_string().contains(&needle))
            });
        }
        let key = |e: &ConnectionEntry| -> u128 {
            match req.sort {
                SortKey::Messages => u128::from(e.messages_received()),
                SortKey::Idle => e.idle_for().as_micros(),
                SortKey::Queue => e.queue_depth() as u128,
                // Oldest: equal keys, so the age tie-break orders them; Newest: by age, reversed.
                SortKey::Oldest => 0,
                SortKey::Newest => u128::from(e.seq),
            }
        };
        // Largest first; ties by age so pages are stable while values do not change.
        let mut keyed: Vec<(u128, u64, Arc<ConnectionEntry>)> =
            all.drain(..).map(|e| (key(&e), e.seq, e)).collect();
        let cmp = |a: &(u128, u64, _), b: &(u128, u64, _)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
        let total = keyed.len();
        let end = offset.saturating_add(limit).min(total);
        if end < total {
            keyed.select_nth_unstable_by(end, cmp);
            keyed.truncate(end);
        }
        keyed.sort_unstable_by(cmp);
        let items: Vec<_> = keyed.into_iter().skip(offset).map(|(_, _, e)| e).collect();
        let next_cursor = (end < total).then(|| format!("o{end}"));
        Ok(Page { items, next_cursor })
    }
}

fn take_range<'a>(
    it: impl DoubleEndedIterator<Item = &'a u64>,
    reverse: bool,
    n: usize,
) -> Vec<u64> {
    if reverse {
        it.rev().take(n).copied().collect()
    } else {
        it.take(n).copied().collect()
    }
}

fn parse_cursor(cursor: &str, kind: char) -> Result<u64, InvalidCursor> {
    cursor
        .strip_prefix(kind)
        .and_then(|n| n.parse().ok())
        .ok_or(InvalidCursor)
}
