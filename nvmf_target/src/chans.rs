//! Per-reactor block-device channels, shared by every queue pair of the reactor's poll
//! group (SPDK's io_channel per thread): one [`IoChannel`] per device, reference counted by
//! the connections that route namespaces to it, polled once per reactor poll.

use std::sync::Arc;

use vmpath_bdev::{BdevError, BlockDevice, IoChannel, IoCompletion};

struct Entry {
    dev: Arc<dyn BlockDevice>,
    chan: Box<dyn IoChannel>,
    users: usize,
}

/// The channels of one poll group, addressed by a stable index.
#[derive(Default)]
pub(crate) struct Channels {
    entries: Vec<Option<Entry>>,
}

fn same_dev(a: &Arc<dyn BlockDevice>, b: &Arc<dyn BlockDevice>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

impl Channels {
    /// The index of `dev`'s channel, opening it on first use; takes a reference.
    pub(crate) fn acquire(&mut self, dev: &Arc<dyn BlockDevice>) -> Result<u32, BdevError> {
        if let Some(i) = self
            .entries
            .iter()
            .position(|e| e.as_ref().is_some_and(|e| same_dev(&e.dev, dev)))
        {
            if let Some(e) = self.entries[i].as_mut() {
                e.users += 1;
            }
            return Ok(i as u32);
        }
        let chan = dev.open_channel()?;
        let entry = Entry {
            dev: dev.clone(),
            chan,
            users: 1,
        };
        match self.entries.iter().position(Option::is_none) {
            Some(i) => {
                self.entries[i] = Some(entry);
                Ok(i as u32)
            }
            None => {
                self.entries.push(Some(entry));
                Ok((self.entries.len() - 1) as u32)
            }
        }
    }

    /// Drops a reference taken by [`acquire`](Self::acquire). The channel is closed once
    /// unreferenced and idle (see [`reap`](Self::reap)).
    pub(crate) fn release(&mut self, idx: u32) {
        if let Some(Some(e)) = self.entries.get_mut(idx as usize) {
            e.users = e.users.saturating_sub(1);
        }
    }

    /// The channel at `idx`.
    #[inline]
    pub(crate) fn get(&mut self, idx: u32) -> Option<&mut dyn IoChannel> {
        match self.entries.get_mut(idx as usize) {
            Some(Some(e)) => Some(e.chan.as_mut()),
            _ => None,
        }
    }

    /// Polls every channel, delivering completions to `done`. Returns how many completed.
    #[inline]
    pub(crate) fn poll(&mut self, now: u64, done: &mut dyn FnMut(IoCompletion)) -> usize {
        let mut n = 0;
        for e in self.entries.iter_mut().flatten() {
            if e.chan.outstanding() > 0 {
                n += e.chan.poll(now, done);
            }
        }
        n
    }

    /// Closes unreferenced channels with nothing in flight.
    pub(crate) fn reap(&mut self) {
        for slot in self.entries.iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|e| e.users == 0 && e.chan.outstanding() == 0)
            {
                *slot = None;
            }
        }
    }

    /// I/Os in flight over all channels.
    pub(crate) fn outstanding(&self) -> usize {
        self.entries
            .iter()
            .flatten()
            .map(|e| e.chan.outstanding())
            .sum()
    }
}
