//! Little-endian field access on fixed-size byte arrays, and the text fields
//! (space padded ASCII, NUL terminated NQNs) used by Identify and Fabrics.
//!
//! Every wire structure of this crate is a `[u8; N]` newtype; its fields are
//! read and written here at constant offsets. The offsets are checked at compile
//! time (`const { assert!(..) }` in the accessor macro), so the `get`/`put`
//! helpers never see an out-of-range offset; they still fall back to zero / no-op
//! instead of panicking.

use thiserror::Error;

/// Errors for text fields of wire structures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FieldError {
    /// The string does not fit into the field.
    #[error("{field}: {len} bytes do not fit in {max} bytes")]
    TooLong {
        /// Field name.
        field: &'static str,
        /// Given length.
        len: usize,
        /// Maximum length.
        max: usize,
    },
    /// The string has a byte the field does not allow (non-ASCII, control, NUL).
    #[error("{field}: invalid character")]
    InvalidChar {
        /// Field name.
        field: &'static str,
    },
    /// The field does not hold valid UTF-8.
    #[error("{field}: not valid UTF-8")]
    NotUtf8 {
        /// Field name.
        field: &'static str,
    },
}

/// Maximum length of an NQN in bytes (NVMe Base 2.0 section 4.5).
pub const NQN_MAX_LEN: usize = 223;

/// An integer stored little-endian on the wire.
pub trait LeInt: Copy {
    /// Width in bytes.
    const WIDTH: usize;
    /// Reads the value at `off` (0 if out of range, which constant offsets rule out).
    fn get(b: &[u8], off: usize) -> Self;
    /// Writes the value at `off` (no-op if out of range).
    fn put(self, b: &mut [u8], off: usize);
}

macro_rules! le_int {
    ($($t:ty),*) => {$(
        impl LeInt for $t {
            const WIDTH: usize = core::mem::size_of::<$t>();
            #[inline(always)]
            fn get(b: &[u8], off: usize) -> Self {
                let mut a = [0u8; core::mem::size_of::<$t>()];
                if let Some(s) = b.get(off..off + Self::WIDTH) {
                    a.copy_from_slice(s);
                }
                <$t>::from_le_bytes(a)
            }
            #[inline(always)]
            fn put(self, b: &mut [u8], off: usize) {
                if let Some(s) = b.get_mut(off..off + Self::WIDTH) {
                    s.copy_from_slice(&self.to_le_bytes());
                }
            }
        }
    )*};
}
le_int!(u8, u16, u32, u64, u128);

/// Reads a little-endian integer at `off` of `b`.
#[inline(always)]
pub fn get<T: LeInt>(b: &[u8], off: usize) -> T {
    T::get(b, off)
}

/// Writes a little-endian integer at `off` of `b`.
#[inline(always)]
pub fn put<T: LeInt>(b: &mut [u8], off: usize, v: T) {
    v.put(b, off)
}

/// Declares a `[u8; N]` wire newtype with a compile-time size assertion,
/// zeroed constructor, byte conversions and a `Debug` that prints the given
/// accessors.
macro_rules! wire_struct {
    ($(#[$m:meta])* $name:ident, $size:expr, debug [$($dbg:ident),* $(,)?]) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(transparent)]
        pub struct $name(pub [u8; $size]);

        const _: () = assert!(core::mem::size_of::<$name>() == $size);

        impl $name {
            /// Size on the wire, in bytes.
            pub const SIZE: usize = $size;

            /// All-zero value.
            #[inline]
            pub const fn zeroed() -> Self {
                Self([0u8; $size])
            }

            /// Wraps wire bytes.
            #[inline]
            pub const fn from_bytes(bytes: [u8; $size]) -> Self {
                Self(bytes)
            }

            /// Copies from a slice that must be exactly [`Self::SIZE`] bytes long.
            #[inline]
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                let a: [u8; $size] = bytes.try_into().ok()?;
                Some(Self(a))
            }

            /// The wire bytes.
            #[inline]
            pub const fn as_bytes(&self) -> &[u8; $size] {
                &self.0
            }

            /// The wire bytes, mutable.
            #[inline]
            pub fn as_bytes_mut(&mut self) -> &mut [u8; $size] {
                &mut self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::zeroed()
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.debug_struct(stringify!($name))
                    $(.field(stringify!($dbg), &self.$dbg()))*
                    .finish_non_exhaustive()
            }
        }
    };
}
pub(crate) use wire_struct;

/// Declares getter/setter pairs for little-endian integer fields at constant
/// byte offsets, with a compile-time bound check against the struct size.
macro_rules! le_fields {
    ($size:expr; $( $(#[$m:meta])* $get:ident, $set:ident : $ty:ident @ $off:expr; )*) => {
        $(
            $(#[$m])*
            #[inline(always)]
            #[allow(clippy::int_plus_one, clippy::identity_op)]
            pub fn $get(&self) -> $ty {
                const { assert!($off + core::mem::size_of::<$ty>() <= $size) };
                $crate::bytes::get::<$ty>(&self.0, $off)
            }
            #[doc = concat!("Sets the field read by [`Self::", stringify!($get), "`].")]
            #[inline(always)]
            #[allow(clippy::int_plus_one, clippy::identity_op)]
            pub fn $set(&mut self, v: $ty) {
                const { assert!($off + core::mem::size_of::<$ty>() <= $size) };
                $crate::bytes::put::<$ty>(&mut self.0, $off, v)
            }
        )*
    };
}
pub(crate) use le_fields;

/// Declares getter/setter pairs for text fields: `ascii` fields are space padded
/// (SN, MN, FR, TRSVCID...), `nqn` fields are NUL padded UTF-8 (NQNs, TRADDR).
macro_rules! text_fields {
    ($size:expr; $( $(#[$m:meta])* $kind:ident $get:ident, $set:ident @ $off:expr, $len:expr; )*) => {
        $(
            $(#[$m])*
            #[inline]
            pub fn $get(&self) -> Result<&str, $crate::bytes::FieldError> {
                const { assert!($off + $len <= $size) };
                $crate::bytes::text_get(&self.0[$off..$off + $len], stringify!($get))
            }
            #[doc = concat!("Sets the field read by [`Self::", stringify!($get), "`] (padded).")]
            #[inline]
            pub fn $set(&mut self, s: &str) -> Result<(), $crate::bytes::FieldError> {
                const { assert!($off + $len <= $size) };
                $crate::bytes::text_put(
                    &mut self.0[$off..$off + $len],
                    s,
                    $crate::bytes::TextKind::$kind,
                    stringify!($get),
                )
            }
        )*
    };
}
pub(crate) use text_fields;

/// How a text field is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// Printable ASCII, padded with spaces (0x20).
    Ascii,
    /// UTF-8 without NUL, padded with NUL; at least one NUL terminator is kept
    /// and at most [`NQN_MAX_LEN`] bytes are allowed (an NQN of 223 bytes in 256).
    Nqn,
}

/// Reads a text field: stops at the first NUL and trims trailing spaces.
pub fn text_get<'a>(b: &'a [u8], field: &'static str) -> Result<&'a str, FieldError> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = core::str::from_utf8(&b[..end]).map_err(|_| FieldError::NotUtf8 { field })?;
    Ok(s.trim_end_matches(' '))
}

/// Writes a text field with the padding of `kind`.
pub fn text_put(
    b: &mut [u8],
    s: &str,
    kind: TextKind,
    field: &'static str,
) -> Result<(), FieldError> {
    let max = match kind {
        TextKind::Ascii => b.len(),
        TextKind::Nqn => b.len().saturating_sub(1).min(NQN_MAX_LEN),
    };
    if s.len() > max {
        return Err(FieldError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    let ok = match kind {
        TextKind::Ascii => s.bytes().all(|c| (0x20..0x7f).contains(&c)),
        TextKind::Nqn => !s.bytes().any(|c| c == 0),
    };
    if !ok {
        return Err(FieldError::InvalidChar { field });
    }
    let pad = match kind {
        TextKind::Ascii => b' ',
        TextKind::Nqn => 0,
    };
    b.fill(pad);
    b[..s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}

/// Declares getter/setter pairs for fixed-size byte-array fields (GUIDs,
/// EUI-64, IEEE OUI...).
macro_rules! array_fields {
    ($size:expr; $( $(#[$m:meta])* $get:ident, $set:ident : [$n:expr] @ $off:expr; )*) => {
        $(
            $(#[$m])*
            #[inline]
            pub fn $get(&self) -> [u8; $n] {
                const { assert!($off + $n <= $size) };
                let mut a = [0u8; $n];
                a.copy_from_slice(&self.0[$off..$off + $n]);
                a
            }
            #[doc = concat!("Sets the field read by [`Self::", stringify!($get), "`].")]
            #[inline]
            pub fn $set(&mut self, v: [u8; $n]) {
                const { assert!($off + $n <= $size) };
                self.0[$off..$off + $n].copy_from_slice(&v);
            }
        )*
    };
}
pub(crate) use array_fields;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_roundtrip_and_out_of_range() {
        let mut b = [0u8; 8];
        put::<u32>(&mut b, 2, 0x1122_3344);
        assert_eq!(b, [0, 0, 0x44, 0x33, 0x22, 0x11, 0, 0]);
        assert_eq!(get::<u32>(&b, 2), 0x1122_3344);
        assert_eq!(get::<u64>(&b, 4), 0, "out of range reads zero");
        put::<u64>(&mut b, 4, u64::MAX);
        assert_eq!(b[4..], [0x22, 0x11, 0, 0], "out of range write is a no-op");
    }

    #[test]
    fn text_fields_pad_and_validate() {
        let mut b = [0u8; 8];
        text_put(&mut b, "abc", TextKind::Ascii, "sn").unwrap();
        assert_eq!(&b, b"abc     ");
        assert_eq!(text_get(&b, "sn").unwrap(), "abc");
        assert!(matches!(
            text_put(&mut b, "abcdefghi", TextKind::Ascii, "sn"),
            Err(FieldError::TooLong { max: 8, .. })
        ));
        assert!(text_put(&mut b, "a\u{e9}", TextKind::Ascii, "sn").is_err());
        text_put(&mut b, "nqn.x", TextKind::Nqn, "nqn").unwrap();
        assert_eq!(&b, b"nqn.x\0\0\0");
        assert_eq!(text_get(&b, "nqn").unwrap(), "nqn.x");
        assert!(text_put(&mut b, "12345678", TextKind::Nqn, "nqn").is_err());
        assert!(text_put(&mut b, "1234567", TextKind::Nqn, "nqn").is_ok());
        assert!(text_get(&[0xff, 0], "x").is_err());
    }
}
