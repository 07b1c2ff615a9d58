//! Allocation-free ordering structures over an arena of intrusive nodes.
//!
//! * [`Wheel`]: a monotone priority queue keyed by `u64` — a hierarchical 64-ary bucket
//!   queue (a radix heap with 6-bit digits). Insert and remove are O(1); `pop_min` finds
//!   the lowest non-empty bucket with two `trailing_zeros` and, when the minimum sits in a
//!   coarse bucket, moves that bucket's nodes down a level. A node moves down at most
//!   [`LEVELS`] times in its life, so every operation is O(1) amortised and independent of
//!   the number of queued nodes (this is what keeps the scheduler flat in the number of VMs).
//!   Keys are exact (granule 1); nodes with equal keys pop in insertion order.
//!   Keys may wrap around `u64` (virtual time): the wheel works on offsets from a base
//!   that it moves forward (`rebase`, O(n) once every 2^62 key units).
//! * [`List`]: an intrusive FIFO over the same arena.
//!
//! A node is in at most one structure at a time; the owner tracks which.

/// Index of a node in the [`Links`] arena.
pub(crate) type NodeId = u32;

/// "No node".
pub(crate) const NIL: u32 = u32::MAX;
const LOC_NONE: u16 = u16::MAX;
const LOC_LIST: u16 = u16::MAX - 1;

/// Number of 6-bit levels (covers all 64 key bits).
pub(crate) const LEVELS: usize = 11;

#[derive(Clone, Copy, Debug)]
struct Node {
    prev: u32,
    next: u32,
    key: u64,
    loc: u16,
}

/// The arena of nodes shared by all wheels and lists of one shard.
#[derive(Debug)]
pub(crate) struct Links {
    nodes: Vec<Node>,
}

impl Links {
    pub(crate) fn new(n: usize) -> Self {
        Links {
            nodes: vec![
                Node {
                    prev: NIL,
                    next: NIL,
                    key: 0,
                    loc: LOC_NONE,
                };
                n
            ],
        }
    }

    /// True when the node is in some wheel or list.
    #[inline]
    pub(crate) fn is_linked(&self, n: NodeId) -> bool {
        self.nodes[n as usize].loc != LOC_NONE
    }
}

/// Wrap-around aware "a < b" for keys that live within 2^63 of each other.
#[inline]
pub(crate) fn before(a: u64, b: u64) -> bool {
    (a.wrapping_sub(b) as i64) < 0
}

/// Wrap-around aware maximum.
#[inline]
pub(crate) fn later(a: u64, b: u64) -> u64 {
    if before(a, b) {
        b
    } else {
        a
    }
}

/// Index of bucket (`level`, `slot`) in the flat bucket arrays.
#[inline(always)]
fn ix(level: usize, slot: usize) -> usize {
    ((level << 6) | (slot & 63)) & 1023
}

/// Hierarchical bucket queue (radix heap); see the module docs.
#[derive(Debug)]
pub(crate) struct Wheel {
    base: u64,
    /// Offset (from `base`) of the last extracted key; every queued key is >= it.
    cursor: u64,
    level_mask: u32,
    /// Per level, the non-empty buckets (16 entries so that `level & 15` needs no check).
    bitmaps: [u64; 16],
    /// Bucket lists, indexed by [`ix`] (1024 entries: `level * 64 + slot`, masked).
    heads: [u32; 1024],
    tails: [u32; 1024],
    len: u32,
    /// Cached minimum (node, key), valid until it is removed or a smaller key arrives.
    min: Option<(NodeId, u64)>,
}

impl Wheel {
    pub(crate) fn new(start: u64) -> Self {
        Wheel {
            base: start,
            cursor: 0,
            level_mask: 0,
            bitmaps: [0; 16],
            heads: [NIL; 1024],
            tails: [NIL; 1024],
            len: 0,
            min: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> u32 {
        self.len
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Smallest key that can be inserted without being clamped (the last extracted key).
    #[inline]
    pub(crate) fn floor(&self) -> u64 {
        self.base.wrapping_add(self.cursor)
    }

    #[inline]
    fn place(&mut self, links: &mut Links, n: NodeId, off: u64) {
        let x = off ^ self.cursor;
        let level = if x < 64 {
            0
        } else {
            (63 - x.leading_zeros() as usize) / 6
        };
        let slot = ((off >> (6 * level)) & 63) as usize;
        let tail = self.tails[ix(level, slot)];
        let node = &mut links.nodes[n as usize];
        node.prev = tail;
        node.next = NIL;
        node.loc = (level * 64 + slot) as u16;
        if tail == NIL {
            self.heads[ix(level, slot)] = n;
            self.bitmaps[level & 15] |= 1 << slot;
            self.level_mask |= 1 << level;
        } else {
            links.nodes[tail as usize].next = n;
        }
        self.tails[ix(level, slot)] = n;
    }

    /// Inserts `n` with `key`; a key below [`Wheel::floor`] is clamped to it. Returns the
    /// key actually stored.
    #[inline]
    pub(crate) fn insert(&mut self, links: &mut Links, n: NodeId, key: u64) -> u64 {
        debug_assert!(!links.is_linked(n));
        let key = later(key, self.floor());
        links.nodes[n as usize].key = key;
        let off = key.wrapping_sub(self.base);
        self.place(links, n, off);
        self.len += 1;
        match self.min {
            Some((_, m)) if before(key, m) => self.min = Some((n, key)),
            None if self.len == 1 => self.min = Some((n, key)),
            _ => {}
        }
        key
    }

    fn unlink_slot(&mut self, links: &mut Links, n: NodeId) -> (usize, usize) {
        let node = links.nodes[n as usize];
        let level = node.loc as usize / 64;
        let slot = node.loc as usize % 64;
        if node.prev == NIL {
            self.heads[ix(level, slot)] = node.next;
        } else {
            links.nodes[node.prev as usize].next = node.next;
        }
        if node.next == NIL {
            self.tails[ix(level, slot)] = node.prev;
        } else {
            links.nodes[node.next as usize].prev = node.prev;
        }
        if self.heads[ix(level, slot)] == NIL {
            self.bitmaps[level & 15] &= !(1 << slot);
            if self.bitmaps[level & 15] == 0 {
                self.level_mask &= !(1 << level);
            }
        }
        let m = &mut links.nodes[n as usize];
        m.loc = LOC_NONE;
        m.prev = NIL;
        m.next = NIL;
        (level, slot)
    }

    /// Removes `n`, which must be in this wheel, without moving the cursor.
    #[inline]
    pub(crate) fn remove(&mut self, links: &mut Links, n: NodeId) {
        debug_assert!(links.nodes[n as usize].loc < LOC_LIST);
        self.unlink_slot(links, n);
        self.len -= 1;
        if self.min.is_some_and(|(m, _)| m == n) {
            self.min = None;
        }
    }

    /// The minimum (first inserted among equal keys), without removing it. O(1) when it
    /// is in level 0 or cached; otherwise one scan of the lowest bucket, which the next
    /// [`Wheel::extract`] redistributes (each node is scanned O([`LEVELS`]) times in its
    /// life when the minimum is extracted after a peek).
    #[inline]
    pub(crate) fn peek(&mut self, links: &Links) -> Option<(NodeId, u64)> {
        if self.min.is_some() {
            return self.min;
        }
        if self.level_mask == 0 {
            return None;
        }
        let level = self.level_mask.trailing_zeros() as usize;
        let slot = self.bitmaps[level & 15].trailing_zeros() as usize;
        let mut n = self.heads[ix(level, slot)];
        let mut best = (n, links.nodes[n as usize].key);
        if level > 0 {
            while n != NIL {
                let k = links.nodes[n as usize].key;
                if before(k, best.1) {
                    best = (n, k);
                }
                n = links.nodes[n as usize].next;
            }
        }
        self.min = Some(best);
        self.min
    }

    /// Removes the minimum `n` (as returned by [`Wheel::peek`]) and moves the cursor to
    /// its key: later inserts must not be smaller (they are clamped otherwise).
    pub(crate) fn extract(&mut self, links: &mut Links, n: NodeId) {
        debug_assert_eq!(self.min.map(|m| m.0), Some(n));
        let key = links.nodes[n as usize].key;
        let (level, slot) = self.unlink_slot(links, n);
        self.len -= 1;
        self.min = None;
        self.cursor = key.wrapping_sub(self.base);
        if level > 0 {
            // The rest of that bucket now shares digit `level` with the cursor: move it down.
            let mut m = self.heads[ix(level, slot)];
            self.heads[ix(level, slot)] = NIL;
            self.tails[ix(level, slot)] = NIL;
            self.bitmaps[level & 15] &= !(1 << slot);
            if self.bitmaps[level & 15] == 0 {
                self.level_mask &= !(1 << level);
            }
            while m != NIL {
                let next = links.nodes[m as usize].next;
                let off = links.nodes[m as usize].key.wrapping_sub(self.base);
                self.place(links, m, off);
                m = next;
            }
        }
        if self.cursor >= 1 << 62 {
            self.rebase(links);
        }
    }

    /// Removes and returns the minimum.
    #[cfg(test)]
    pub(crate) fn pop(&mut self, links: &mut Links) -> Option<(NodeId, u64)> {
        let (n, key) = self.peek(links)?;
        self.extract(links, n);
        Some((n, key))
    }

    /// Removes and returns the minimum if its key is `<= limit` (real-time timers).
    #[inline]
    pub(crate) fn pop_due(&mut self, links: &mut Links, limit: u64) -> Option<(NodeId, u64)> {
        if self.level_mask == 0 {
            return None;
        }
        if self.min.is_none() {
            // Cheap bound first: the start of the lowest non-empty bucket.
            let level = self.level_mask.trailing_zeros() as usize;
            let slot = self.bitmaps[level & 15].trailing_zeros() as u64;
            let shift = 6 * level;
            let high = if shift + 6 >= 64 {
                0
            } else {
                self.cursor >> (shift + 6) << (shift + 6)
            };
            if before(limit, self.base.wrapping_add(high | (slot << shift))) {
                return None;
            }
        }
        let (n, key) = self.peek(links)?;
        if before(limit, key) {
            return None;
        }
        self.extract(links, n);
        Some((n, key))
    }

    /// Smallest key, if any.
    #[inline]
    pub(crate) fn min_key(&mut self, links: &Links) -> Option<u64> {
        self.peek(links).map(|(_, k)| k)
    }

    /// Moves `base` up to the cursor so offsets stay far from overflow.
    fn rebase(&mut self, links: &mut Links) {
        let mut all = Vec::with_capacity(self.len as usize);
        for level in 0..LEVELS {
            for slot in 0..64 {
                let mut n = self.heads[ix(level, slot)];
                while n != NIL {
                    all.push(n);
                    n = links.nodes[n as usize].next;
                }
                self.heads[ix(level, slot)] = NIL;
                self.tails[ix(level, slot)] = NIL;
            }
            self.bitmaps[level & 15] = 0;
        }
        self.level_mask = 0;
        self.base = self.base.wrapping_add(self.cursor);
        self.cursor = 0;
        self.min = None;
        // Re-insert in key order so equal keys keep FIFO order.
        all.sort_by_key(|&n| links.nodes[n as usize].key.wrapping_sub(self.base));
        for n in all {
            let off = links.nodes[n as usize].key.wrapping_sub(self.base);
            self.place(links, n, off);
        }
    }
}

/// Intrusive FIFO list over [`Links`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct List {
    head: u32,
    tail: u32,
    len: u32,
}

impl Default for List {
    fn default() -> Self {
        List {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

impl List {
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// First node and its key.
    #[inline]
    pub(crate) fn front(&self, links: &Links) -> Option<(NodeId, u64)> {
        if self.head == NIL {
            None
        } else {
            Some((self.head, links.nodes[self.head as usize].key))
        }
    }

    #[inline]
    pub(crate) fn push_back(&mut self, links: &mut Links, n: NodeId, key: u64) {
        debug_assert!(!links.is_linked(n));
        let node = &mut links.nodes[n as usize];
        node.prev = self.tail;
        node.next = NIL;
        node.key = key;
        node.loc = LOC_LIST;
        if self.tail == NIL {
            self.head = n;
        } else {
            links.nodes[self.tail as usize].next = n;
        }
        self.tail = n;
        self.len += 1;
    }

    #[inline]
    pub(crate) fn remove(&mut self, links: &mut Links, n: NodeId) {
        let node = links.nodes[n as usize];
        debug_assert_eq!(node.loc, LOC_LIST);
        if node.prev == NIL {
            self.head = node.next;
        } else {
            links.nodes[node.prev as usize].next = node.next;
        }
        if node.next == NIL {
            self.tail = node.prev;
        } else {
            links.nodes[node.next as usize].prev = node.prev;
        }
        let m = &mut links.nodes[n as usize];
        m.loc = LOC_NONE;
        m.prev = NIL;
        m.next = NIL;
        self.len -= 1;
    }

    /// Removes every node, returning them in order.
    #[cfg(test)]
    pub(crate) fn take_all(&mut self, links: &mut Links) -> Vec<NodeId> {
        let mut v = Vec::with_capacity(self.len as usize);
        while let Some((n, _)) = self.front(links) {
            self.remove(links, n);
            v.push(n);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pops_in_key_order_with_fifo_ties() {
        let mut links = Links::new(8);
        let mut w = Wheel::new(0);
        for (n, k) in [(0, 500), (1, 70), (2, 70), (3, 1 << 40), (4, 3)] {
            w.insert(&mut links, n, k);
        }
        let got: Vec<_> = std::iter::from_fn(|| w.pop(&mut links)).collect();
        assert_eq!(got, vec![(4, 3), (1, 70), (2, 70), (0, 500), (3, 1 << 40)]);
        assert!(w.is_empty());
    }

    #[test]
    fn insert_below_peeked_min_is_ordered() {
        let mut links = Links::new(4);
        let mut w = Wheel::new(0);
        w.insert(&mut links, 0, 1 << 30);
        assert_eq!(w.peek(&links), Some((0, 1 << 30)));
        w.insert(&mut links, 1, 1000); // below the peeked minimum, above the floor
        assert_eq!(w.peek(&links), Some((1, 1000)));
        w.remove(&mut links, 1);
        assert_eq!(w.pop(&mut links), Some((0, 1 << 30)));
    }

    #[test]
    fn clamps_keys_below_cursor_and_pop_due_respects_limit() {
        let mut links = Links::new(4);
        let mut w = Wheel::new(0);
        w.insert(&mut links, 0, 1000);
        assert_eq!(w.pop_due(&mut links, 999), None);
        assert_eq!(w.pop_due(&mut links, 1000), Some((0, 1000)));
        assert_eq!(w.insert(&mut links, 1, 10), 1000);
        w.insert(&mut links, 2, 5000);
        assert_eq!(w.pop_due(&mut links, 4999), Some((1, 1000)));
        assert_eq!(w.pop_due(&mut links, 4999), None);
        assert_eq!(w.pop(&mut links), Some((2, 5000)));
    }

    #[test]
    fn wraps_around_u64() {
        let mut links = Links::new(4);
        let start = u64::MAX - 100;
        let mut w = Wheel::new(start);
        w.insert(&mut links, 0, start.wrapping_add(300)); // wrapped to 199
        w.insert(&mut links, 1, start.wrapping_add(50));
        assert_eq!(w.pop(&mut links), Some((1, start.wrapping_add(50))));
        assert_eq!(w.pop(&mut links), Some((0, 199)));
    }

    #[test]
    fn rebase_keeps_order() {
        let mut links = Links::new(4);
        let mut w = Wheel::new(0);
        w.insert(&mut links, 0, (1 << 62) + 10);
        w.insert(&mut links, 1, (1 << 62) + 5);
        w.insert(&mut links, 2, (1 << 62) + 5);
        assert_eq!(w.pop(&mut links), Some((1, (1 << 62) + 5)));
        assert_eq!(w.pop(&mut links), Some((2, (1 << 62) + 5)));
        assert_eq!(w.pop(&mut links), Some((0, (1 << 62) + 10)));
    }

    #[test]
    fn list_fifo_and_remove() {
        let mut links = Links::new(4);
        let mut l = List::default();
        l.push_back(&mut links, 0, 1);
        l.push_back(&mut links, 1, 2);
        l.push_back(&mut links, 2, 3);
        l.remove(&mut links, 1);
        assert_eq!(l.take_all(&mut links), vec![0, 2]);
        assert!(l.is_empty());
    }

    proptest! {
        // Against a reference model: any mix of insert / remove / pop gives the same minima.
        #[test]
        fn matches_reference(ops in proptest::collection::vec((0u8..3, 0u32..32, 0u64..1_000_000), 1..400)) {
            let mut links = Links::new(32);
            let mut w = Wheel::new(0);
            let mut model: Vec<(u64, u32)> = Vec::new(); // (key, node)
            for (op, node, delta) in ops {
                match op {
                    0 if !links.is_linked(node) => {
                        let key = w.floor() + delta;
                        let stored = w.insert(&mut links, node, key);
                        prop_assert_eq!(stored, key);
                        model.push((key, node));
                    }
                    1 if links.is_linked(node) => {
                        w.remove(&mut links, node);
                        model.retain(|e| e.1 != node);
                    }
                    _ => {
                        // Minimum key; among equal keys any (FIFO holds within a bucket).
                        let got = w.pop(&mut links);
                        let want = model.iter().map(|e| e.0).min();
                        prop_assert_eq!(got.map(|g| g.1), want);
                        if let Some((n, k)) = got {
                            let pos = model.iter().position(|e| e.1 == n && e.0 == k);
                            prop_assert!(pos.is_some());
                            model.remove(pos.unwrap_or(0));
                        }
                    }
                }
                prop_assert_eq!(w.len() as usize, model.len());
            }
        }
    }
}
