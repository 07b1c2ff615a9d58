//! An owned, aligned, zero-initialised I/O buffer.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use crate::IoVec;

/// A heap buffer aligned for direct I/O (default 4096 bytes), zero-filled on creation.
#[derive(Debug)]
pub struct DmaBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: DmaBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for DmaBuf {}
// SAFETY: shared references only allow reads, like &[u8].
unsafe impl Sync for DmaBuf {}

impl DmaBuf {
    /// Allocates `len` zeroed bytes aligned to 4096.
    pub fn new(len: usize) -> DmaBuf {
        DmaBuf::with_align(len, 4096)
    }

    /// Allocates `len` zeroed bytes aligned to `align` (a power of two).
    pub fn with_align(len: usize, align: usize) -> DmaBuf {
        let layout = Layout::from_size_align(len.max(1), align.max(1)).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        DmaBuf { ptr, layout }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// True for a zero-length buffer (never: at least one byte is allocated).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised (zeroed) bytes for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len()) }
    }

    /// The bytes, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len()) }
    }

    /// An [`IoVec`] over `range` of this buffer.
    ///
    /// # Safety
    /// The buffer must not be dropped, moved out of its allocation or otherwise accessed until
    /// the I/O that carries the returned `IoVec` has completed.
    pub unsafe fn iovec(&mut self, range: std::ops::Range<usize>) -> IoVec {
        assert!(range.start <= range.end && range.end <= self.len());
        // SAFETY: the range is inside the allocation; the caller upholds the lifetime contract.
        unsafe { IoVec::from_raw(self.ptr.as_ptr().add(range.start), range.end - range.start) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `with_align` with this exact layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}
