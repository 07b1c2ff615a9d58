//! Guest memory as the frontend shares it (vhost-user `SET_MEM_TABLE`, `ADD_MEM_REG`,
//! `REM_MEM_REG`; "Memory regions" in the vhost-user specification).
//!
//! Each region is a file descriptor (QEMU's `memory-backend-memfd,share=on`) mapped shared
//! into this process. The control thread keeps the region table and builds an immutable
//! [`GuestMemoryMmap`] snapshot from it; reactors get the snapshot by message and keep it (an
//! `Arc`) as long as requests use it, so a region removed by the frontend stays mapped until
//! the last request that points into it completes.
//!
//! Ring addresses arrive as frontend virtual addresses and are translated to guest physical
//! addresses with the table ([`MemTable::va_to_gpa`]). Data buffers are translated to host
//! pointers ([`translate`]); the walker already checked them against the regions.

use std::fs::File;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};
use vmpath_bdev::{IoVec, SgList};

use crate::chain::Seg;

/// Most regions the backend accepts (`GET_MAX_MEM_SLOTS`).
pub const MAX_MEM_SLOTS: usize = 32;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A region has zero size or its end overflows.
    #[error("memory region gpa {gpa:#x} size {size:#x} is invalid")]
    InvalidRegion {
        /// Guest physical address.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// Mapping the region's file failed.
    #[error(
        "cannot map memory region gpa {gpa:#x} size {size:#x} at file offset {offset:#x}: {source}"
    )]
    Map {
        /// Guest physical address.
        gpa: u64,
        /// Size.
        size: u64,
        /// Offset in the file.
        offset: u64,
        /// Cause.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// Regions overlap in guest physical or frontend virtual address space.
    #[error("memory region gpa {gpa:#x} size {size:#x} overlaps another region")]
    Overlap {
        /// Guest physical address.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// More regions than [`MAX_MEM_SLOTS`].
    #[error("more than {MAX_MEM_SLOTS} memory regions")]
    TooManyRegions,
    /// `REM_MEM_REG` named a region that is not in the table.
    #[error("no memory region at gpa {gpa:#x} size {size:#x}")]
    NoSuchRegion {
        /// Guest physical address.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// The number of descriptors does not match the number of regions.
    #[error("{regions} regions but {files} file descriptors")]
    FdCount {
        /// Regions.
        regions: usize,
        /// Files.
        files: usize,
    },
}

/// A region as described by the frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionDesc {
    /// Guest physical address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Address of the region in the frontend's virtual address space.
    pub user_addr: u64,
    /// Offset of the region in the file.
    pub mmap_offset: u64,
}

#[derive(Debug)]
struct Mapped {
    desc: RegionDesc,
    region: Arc<GuestRegionMmap>,
}

/// The region table of one connection (control thread only).
#[derive(Debug, Default)]
pub struct MemTable {
    regions: Vec<Mapped>,
}

fn map_region(d: RegionDesc, file: File) -> Result<Mapped, MemoryError> {
    let bad = || MemoryError::InvalidRegion {
        gpa: d.gpa,
        size: d.size,
    };
    if d.size == 0
        || d.gpa.checked_add(d.size).is_none()
        || d.user_addr.checked_add(d.size).is_none()
    {
        return Err(bad());
    }
    let size = usize::try_from(d.size).map_err(|_| bad())?;
    let mapping = MmapRegionBuilder::new(size)
        .with_file_offset(FileOffset::new(file, d.mmap_offset))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
        .build()
        .map_err(|source| MemoryError::Map {
            gpa: d.gpa,
            size: d.size,
            offset: d.mmap_offset,
            source,
        })?;
    let region = GuestRegionMmap::new(mapping, GuestAddress(d.gpa)).ok_or_else(bad)?;
    Ok(Mapped {
        desc: d,
        region: Arc::new(region),
    })
}

fn overlaps(a: &RegionDesc, b: &RegionDesc) -> bool {
    let gpa = a.gpa < b.gpa + b.size && b.gpa < a.gpa + a.size;
    let va = a.user_addr < b.user_addr + b.size && b.user_addr < a.user_addr + a.size;
    gpa || va
}

impl MemTable {
    /// An empty table.
    pub fn new() -> MemTable {
        MemTable::default()
    }

    /// Replaces the whole table (`SET_MEM_TABLE`). On error the old table stays.
    pub fn set(&mut self, descs: &[RegionDesc], files: Vec<File>) -> Result<(), MemoryError> {
        if descs.len() != files.len() {
            return Err(MemoryError::FdCount {
                regions: descs.len(),
                files: files.len(),
            });
        }
        if descs.len() > MAX_MEM_SLOTS {
            return Err(MemoryError::TooManyRegions);
        }
        let mut new: Vec<Mapped> = Vec::with_capacity(descs.len());
        for (d, f) in descs.iter().zip(files) {
            if new.iter().any(|m| overlaps(&m.desc, d)) {
                return Err(MemoryError::Overlap {
                    gpa: d.gpa,
                    size: d.size,
                });
            }
            new.push(map_region(*d, f)?);
        }
        new.sort_by_key(|m| m.desc.gpa);
        self.regions = new;
        Ok(())
    }

    /// Adds one region (`ADD_MEM_REG`).
    pub fn add(&mut self, d: RegionDesc, file: File) -> Result<(), MemoryError> {
        if self.regions.len() >= MAX_MEM_SLOTS {
            return Err(MemoryError::TooManyRegions);
        }
        if self.regions.iter().any(|m| overlaps(&m.desc, &d)) {
            return Err(MemoryError::Overlap {
                gpa: d.gpa,
                size: d.size,
            });
        }
        let m = map_region(d, file)?;
        self.regions.push(m);
        self.regions.sort_by_key(|m| m.desc.gpa);
        Ok(())
    }

    /// Removes the region with this guest address and size (`REM_MEM_REG`).
    pub fn remove(&mut self, gpa: u64, size: u64) -> Result<(), MemoryError> {
        let pos = self
            .regions
            .iter()
            .position(|m| m.desc.gpa == gpa && m.desc.size == size)
            .ok_or(MemoryError::NoSuchRegion { gpa, size })?;
        self.regions.remove(pos);
        Ok(())
    }

    /// Drops every region.
    pub fn clear(&mut self) {
        self.regions.clear();
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// True if there are no regions.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The regions as described by the frontend.
    pub fn descs(&self) -> Vec<RegionDesc> {
        self.regions.iter().map(|m| m.desc).collect()
    }

    /// An immutable snapshot for the data path (`None` if the table is empty).
    pub fn snapshot(&self) -> Option<Arc<GuestMemoryMmap>> {
        if self.regions.is_empty() {
            return None;
        }
        GuestMemoryMmap::from_arc_regions(self.regions.iter().map(|m| m.region.clone()).collect())
            .ok()
            .map(Arc::new)
    }

    /// Translates a frontend virtual address to a guest physical address, requiring `len`
    /// bytes to lie in the same region.
    pub fn va_to_gpa(&self, va: u64, len: u64) -> Option<u64> {
        self.regions.iter().find_map(|m| {
            let d = &m.desc;
            let off = va.checked_sub(d.user_addr)?;
            (off.checked_add(len)? <= d.size).then(|| d.gpa + off)
        })
    }
}

/// One mapped region as the data path sees it.
#[derive(Debug, Clone, Copy)]
struct HostRegion {
    gpa: u64,
    end: u64,
    host: *mut u8,
}

/// A guest memory snapshot with a flat region table for the data path: bounds-checked
/// reads and writes of guest memory without `vm-memory`'s generic slice iterators (which cost
/// more than the rest of a request's handling). Every access checks that the whole range lies
/// inside one mapped region; the snapshot keeps the mappings alive.
#[derive(Debug, Clone)]
pub struct GuestRam {
    mem: Arc<GuestMemoryMmap>,
    regions: Vec<HostRegion>,
}

// SAFETY: the raw pointers point into the mappings owned by `mem` (an `Arc`, Send + Sync);
// GuestRam only reads and writes through them with volatile accesses, like vm-memory does.
unsafe impl Send for GuestRam {}
// SAFETY: as above; no interior state is mutated through `&GuestRam` except guest memory,
// which is shared with the guest anyway.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// Wraps a snapshot.
    pub fn new(mem: Arc<GuestMemoryMmap>) -> GuestRam {
        let mut regions: Vec<HostRegion> = mem
            .iter()
            .map(|r| HostRegion {
                gpa: r.start_addr().0,
                end: r.start_addr().0 + r.len(),
                host: r.as_ptr(),
            })
            .collect();
        regions.sort_by_key(|r| r.gpa);
        GuestRam { mem, regions }
    }

    /// The underlying `vm-memory` snapshot (for `virtio-queue`).
    #[inline]
    pub fn mmap(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The snapshot's `Arc`.
    pub fn arc(&self) -> &Arc<GuestMemoryMmap> {
        &self.mem
    }

    /// Host address of `gpa..gpa+len` if the whole range lies in one region.
    #[inline]
    fn host(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let end = gpa.checked_add(len)?;
        for r in &self.regions {
            if gpa >= r.gpa && end <= r.end {
                return Some(r.host.wrapping_add((gpa - r.gpa) as usize));
            }
        }
        None
    }

    /// Whether `gpa..gpa+len` is guest memory (possibly across adjacent regions).
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        let mut at = gpa;
        while at < end {
            match self.regions.iter().find(|r| at >= r.gpa && at < r.end) {
                Some(r) => at = r.end,
                None => return false,
            }
        }
        true
    }

    /// Copies guest memory at `gpa` into `out` (one region; false if outside).
    #[inline]
    pub fn read(&self, gpa: u64, out: &mut [u8]) -> bool {
        let Some(src) = self.host(gpa, out.len() as u64) else {
            return false;
        };
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `src..src+out.len()` lies inside a live mapping (checked by `host`);
            // volatile because the guest may change it concurrently.
            *b = unsafe { std::ptr::read_volatile(src.add(i)) };
        }
        true
    }

    /// Reads a 16-byte little-endian record (a descriptor, a request header).
    #[inline]
    pub fn read16(&self, gpa: u64) -> Option<[u8; 16]> {
        let src = self.host(gpa, 16)?;
        let mut out = [0u8; 16];
        if (src as usize).is_multiple_of(8) {
            // SAFETY: 16 bytes inside a live mapping, 8-byte aligned; volatile as above.
            let (a, b) = unsafe {
                (
                    std::ptr::read_volatile(src as *const u64),
                    std::ptr::read_volatile(src.add(8) as *const u64),
                )
            };
            out[..8].copy_from_slice(&a.to_ne_bytes());
            out[8..].copy_from_slice(&b.to_ne_bytes());
        } else if !self.read(gpa, &mut out) {
            return None;
        }
        Some(out)
    }

    /// Loads an aligned little-endian u16 with acquire ordering (ring indexes and entries).
    #[inline]
    pub fn load_u16(&self, gpa: u64) -> Option<u16> {
        if !gpa.is_multiple_of(2) {
            return None;
        }
        let p = self.host(gpa, 2)?;
        // SAFETY: an aligned u16 inside a live mapping; shared with the guest, so accessed
        // atomically.
        let a = unsafe { std::sync::atomic::AtomicU16::from_ptr(p as *mut u16) };
        Some(u16::from_le(a.load(std::sync::atomic::Ordering::Acquire)))
    }

    /// Stores an aligned little-endian u16 with release ordering (ring indexes and entries).
    #[inline]
    pub fn store_u16(&self, gpa: u64, v: u16) -> bool {
        if !gpa.is_multiple_of(2) {
            return false;
        }
        let Some(p) = self.host(gpa, 2) else {
            return false;
        };
        // SAFETY: an aligned u16 inside a live mapping; shared with the guest, so accessed
        // atomically.
        let a = unsafe { std::sync::atomic::AtomicU16::from_ptr(p as *mut u16) };
        a.store(v.to_le(), std::sync::atomic::Ordering::Release);
        true
    }

    /// Writes `data` at `gpa` (one region; false if outside).
    #[inline]
    pub fn write(&self, gpa: u64, data: &[u8]) -> bool {
        let Some(dst) = self.host(gpa, data.len() as u64) else {
            return false;
        };
        for (i, b) in data.iter().enumerate() {
            // SAFETY: inside a live mapping (checked by `host`); volatile as in `read`.
            unsafe { std::ptr::write_volatile(dst.add(i), *b) };
        }
        true
    }
}

/// Why a data buffer could not be translated (guest memory changed since the walk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest buffer {gpa:#x}+{len} is not mapped")]
pub struct TranslateError {
    /// Buffer address.
    pub gpa: u64,
    /// Buffer length.
    pub len: u32,
}

/// Appends the host memory of `segs` to `out`, splitting buffers that span adjacent regions.
///
/// # Safety contract of the result
/// The pointers stay valid as long as `mem` (the snapshot) is alive; the caller keeps the
/// snapshot until the I/O that uses them completes.
pub fn translate(ram: &GuestRam, segs: &[Seg], out: &mut SgList) -> Result<(), TranslateError> {
    for s in segs {
        let mut gpa = s.gpa;
        let mut left = s.len as u64;
        while left > 0 {
            let err = TranslateError {
                gpa: s.gpa,
                len: s.len,
            };
            let r = ram
                .regions
                .iter()
                .find(|r| gpa >= r.gpa && gpa < r.end)
                .ok_or(err)?;
            let off = gpa - r.gpa;
            let n = (r.end - gpa).min(left);
            let base = r.host.wrapping_add(off as usize);
            // SAFETY: `base..base+n` lies inside the mapping of region `r` (gpa < end and
            // n <= end - gpa), which the snapshot keeps mapped. The memory is guest RAM shared
            // with the frontend: the guest may write it concurrently, which gives it garbage
            // data but no memory unsafety in this process (plain bytes, no references formed).
            out.push(unsafe { IoVec::from_raw(base, n as usize) });
            gpa += n;
            left -= n;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn memfd(size: u64) -> File {
        let mut f = crate::sys::memfd("vhost-memory-test").unwrap();
        f.set_len(size).unwrap();
        f.flush().unwrap();
        f
    }

    #[test]
    fn regions_map_translate_and_split() {
        let mut t = MemTable::new();
        let a = RegionDesc {
            gpa: 0,
            size: 0x10000,
            user_addr: 0x7000_0000,
            mmap_offset: 0,
        };
        let b = RegionDesc {
            gpa: 0x10000,
            size: 0x10000,
            user_addr: 0x9000_0000,
            mmap_offset: 0,
        };
        t.set(&[a, b], vec![memfd(0x10000), memfd(0x10000)])
            .unwrap();
        assert_eq!(t.va_to_gpa(0x7000_0100, 0x100), Some(0x100));
        assert_eq!(t.va_to_gpa(0x9000_0010, 16), Some(0x10010));
        assert_eq!(t.va_to_gpa(0x7000_ff00, 0x200), None);
        let mem = GuestRam::new(t.snapshot().unwrap());
        assert!(mem.contains(0xff00, 0x200));
        assert!(!mem.contains(0x1ff00, 0x200));
        assert!(mem.write(0x100, &[1, 2, 3]));
        let mut b = [0u8; 3];
        assert!(mem.read(0x100, &mut b));
        assert_eq!(b, [1, 2, 3]);
        assert!(!mem.read(0xfffe, &mut [0u8; 4]), "reads never span regions");
        assert_eq!(mem.load_u16(0x100), Some(0x0201));
        assert_eq!(mem.load_u16(0x101), None);
        assert!(mem.store_u16(0x200, 0xbeef));
        assert_eq!(mem.load_u16(0x200), Some(0xbeef));
        assert!(!mem.store_u16(0x20000, 1));
        assert!(mem.read16(0x1fff8).is_none());
        let mut sg = SgList::new();
        translate(
            &mem,
            &[Seg {
                gpa: 0xff00,
                len: 0x200,
                write: true,
            }],
            &mut sg,
        )
        .unwrap();
        assert_eq!(sg.len(), 2);
        assert_eq!(sg[0].len() + sg[1].len(), 0x200);
        let mut sg = SgList::new();
        assert!(translate(
            &mem,
            &[Seg {
                gpa: 0x1ff00,
                len: 0x200,
                write: true
            }],
            &mut sg
        )
        .is_err());
    }

    #[test]
    fn overlap_add_remove() {
        let mut t = MemTable::new();
        let a = RegionDesc {
            gpa: 0,
            size: 0x10000,
            user_addr: 0x7000_0000,
            mmap_offset: 0,
        };
        t.add(a, memfd(0x10000)).unwrap();
        let over = RegionDesc { gpa: 0x8000, ..a };
        assert!(matches!(
            t.add(over, memfd(0x10000)),
            Err(MemoryError::Overlap { .. })
        ));
        assert!(t.remove(0, 0x1000).is_err());
        t.remove(0, 0x10000).unwrap();
        assert!(t.is_empty());
        assert!(t.snapshot().is_none());
    }
}
