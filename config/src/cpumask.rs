//! SPDK-style CPU masks: `-m 0x3` or `-m [0,2-3]`.
//!
//! SPDK accepts a hexadecimal mask (bit *n* selects core *n*, optional `0x` prefix) or a
//! bracketed list of cores and ranges (`spdk_cpuset_parse` in SPDK's `lib/util/cpuset.c`).
//! vmpath accepts the same two forms so operators can reuse their command lines.

/// Highest number of cores a mask can name (SPDK's `SPDK_CPUSET_SIZE`).
pub const MAX_CORES: usize = 1024;

/// Why a CPU mask could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpumaskError {
    /// The mask string is empty.
    #[error("empty cpumask (expected a hex mask like \"0x3\" or a list like \"[0,2-3]\")")]
    Empty,
    /// A character of a hex mask is not a hex digit.
    #[error("invalid cpumask {mask:?}: {found:?} is not a hex digit (expected e.g. \"0x3\")")]
    BadHexDigit {
        /// The whole mask as given.
        mask: String,
        /// The offending character.
        found: char,
    },
    /// A hex mask names more cores than [`MAX_CORES`].
    #[error("invalid cpumask {mask:?}: longer than {max} bits", max = MAX_CORES)]
    TooWide {
        /// The whole mask as given.
        mask: String,
    },
    /// An element of a `[...]` list is not a core number or a `lo-hi` range.
    #[error("invalid cpumask {mask:?}: {item:?} is not a core number or a range like \"2-5\"")]
    BadListItem {
        /// The whole mask as given.
        mask: String,
        /// The offending list element.
        item: String,
    },
    /// A `lo-hi` range has `lo > hi`.
    #[error("invalid cpumask {mask:?}: range {lo}-{hi} is reversed")]
    ReversedRange {
        /// The whole mask as given.
        mask: String,
        /// Start of the range.
        lo: usize,
        /// End of the range.
        hi: usize,
    },
    /// A core number is at or above [`MAX_CORES`].
    #[error("invalid cpumask {mask:?}: core {core} is out of range (max {})", MAX_CORES - 1)]
    CoreOutOfRange {
        /// The whole mask as given.
        mask: String,
        /// The core number.
        core: usize,
    },
    /// A `[` list is not closed by `]`.
    #[error("invalid cpumask {mask:?}: a list must be written as \"[0,2-3]\"")]
    UnclosedList {
        /// The whole mask as given.
        mask: String,
    },
    /// The mask selects no core at all.
    #[error("invalid cpumask {mask:?}: selects no core")]
    NoCores {
        /// The whole mask as given.
        mask: String,
    },
}

/// Parses an SPDK-style CPU mask into a sorted list of distinct core numbers.
///
/// Accepted forms: `"0x3"`, `"3"`, `"0XfF"` (hexadecimal, bit *n* = core *n*) and
/// `"[0,2-3]"` (list of cores and inclusive ranges).
///
/// ```
/// assert_eq!(vmpath_config::parse_cpumask("0x5").unwrap(), vec![0, 2]);
/// assert_eq!(vmpath_config::parse_cpumask("[1,3-4]").unwrap(), vec![1, 3, 4]);
/// assert!(vmpath_config::parse_cpumask("0xg").is_err());
/// ```
pub fn parse_cpumask(mask: &str) -> Result<Vec<usize>, CpumaskError> {
    let text = mask.trim();
    if text.is_empty() {
        return Err(CpumaskError::Empty);
    }
    let mut selected = vec![false; MAX_CORES];
    if let Some(rest) = text.strip_prefix('[') {
        let body = rest
            .strip_suffix(']')
            .ok_or_else(|| CpumaskError::UnclosedList {
                mask: mask.to_owned(),
            })?;
        parse_list(mask, body, &mut selected)?;
    } else {
        parse_hex(mask, text, &mut selected)?;
    }
    let cores: Vec<usize> = selected
        .iter()
        .enumerate()
        .filter_map(|(core, &on)| on.then_some(core))
        .collect();
    if cores.is_empty() {
        return Err(CpumaskError::NoCores {
            mask: mask.to_owned(),
        });
    }
    Ok(cores)
}

/// Formats a list of cores as a hex mask (`[0, 1]` -> `"0x3"`), the inverse of
/// [`parse_cpumask`] for the hex form. Cores at or above [`MAX_CORES`] are ignored.
pub fn format_cpumask(cores: &[usize]) -> String {
    let mut nibbles = vec![0u8; MAX_CORES / 4];
    let mut top = 0;
    for &core in cores.iter().filter(|&&c| c < MAX_CORES) {
        nibbles[core / 4] |= 1 << (core % 4);
        top = top.max(core / 4);
    }
    let digits: String = nibbles[..=top]
        .iter()
        .rev()
        .map(|&n| char::from_digit(u32::from(n), 16).unwrap_or('0'))
        .collect();
    format!("0x{digits}")
}

fn parse_hex(mask: &str, text: &str, selected: &mut [bool]) -> Result<(), CpumaskError> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() {
        return Err(CpumaskError::Empty);
    }
    // Leading zeros do not select anything, so they do not count against the width.
    let significant = digits.trim_start_matches('0');
    if significant.len() > MAX_CORES / 4 {
        return Err(CpumaskError::TooWide {
            mask: mask.to_owned(),
        });
    }
    for (index, ch) in digits.chars().rev().enumerate() {
        let value = ch.to_digit(16).ok_or_else(|| CpumaskError::BadHexDigit {
            mask: mask.to_owned(),
            found: ch,
        })?;
        for bit in 0..4 {
            if value & (1 << bit) != 0 {
                // `index < MAX_CORES / 4` here because the significant part fits.
                selected[index * 4 + bit] = true;
            }
        }
    }
    Ok(())
}

fn parse_list(mask: &str, body: &str, selected: &mut [bool]) -> Result<(), CpumaskError> {
    let core_number = |item: &str, part: &str| -> Result<usize, CpumaskError> {
        let core: usize = part.trim().parse().map_err(|_| CpumaskError::BadListItem {
            mask: mask.to_owned(),
            item: item.to_owned(),
        })?;
        if core >= MAX_CORES {
            return Err(CpumaskError::CoreOutOfRange {
                mask: mask.to_owned(),
                core,
            });
        }
        Ok(core)
    };
    for item in body.split(',') {
        let item = item.trim();
        let (lo, hi) = match item.split_once('-') {
            Some((lo, hi)) => (core_number(item, lo)?, core_number(item, hi)?),
            None => {
                let core = core_number(item, item)?;
                (core, core)
            }
        };
        if lo > hi {
            return Err(CpumaskError::ReversedRange {
                mask: mask.to_owned(),
                lo,
                hi,
            });
        }
        selected[lo..=hi].iter_mut().for_each(|s| *s = true);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_masks() {
        assert_eq!(parse_cpumask("0x1").unwrap(), vec![0]);
        assert_eq!(parse_cpumask("0x3").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpumask("3").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpumask("0XA0").unwrap(), vec![5, 7]);
        assert_eq!(parse_cpumask(" 0x100 ").unwrap(), vec![8]);
        assert_eq!(parse_cpumask("0x0001").unwrap(), vec![0]);
    }

    #[test]
    fn list_masks() {
        assert_eq!(parse_cpumask("[0]").unwrap(), vec![0]);
        assert_eq!(parse_cpumask("[0,2-4]").unwrap(), vec![0, 2, 3, 4]);
        assert_eq!(parse_cpumask("[ 3 , 1, 1-2 ]").unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn errors() {
        assert_eq!(parse_cpumask(""), Err(CpumaskError::Empty));
        assert_eq!(parse_cpumask("0x"), Err(CpumaskError::Empty));
        assert!(matches!(
            parse_cpumask("0xg1"),
            Err(CpumaskError::BadHexDigit { found: 'g', .. })
        ));
        assert!(matches!(
            parse_cpumask("0x0"),
            Err(CpumaskError::NoCores { .. })
        ));
        assert!(matches!(
            parse_cpumask("[0,x]"),
            Err(CpumaskError::BadListItem { .. })
        ));
        assert!(matches!(
            parse_cpumask("[3-1]"),
            Err(CpumaskError::ReversedRange { lo: 3, hi: 1, .. })
        ));
        assert!(matches!(
            parse_cpumask("[1024]"),
            Err(CpumaskError::CoreOutOfRange { core: 1024, .. })
        ));
        assert!(matches!(
            parse_cpumask("[0,1"),
            Err(CpumaskError::UnclosedList { .. })
        ));
        let wide = format!("0x1{}", "0".repeat(MAX_CORES / 4));
        assert!(matches!(
            parse_cpumask(&wide),
            Err(CpumaskError::TooWide { .. })
        ));
        let widest = format!("0x8{}", "0".repeat(MAX_CORES / 4 - 1));
        assert_eq!(parse_cpumask(&widest).unwrap(), vec![MAX_CORES - 1]);
        let msg = parse_cpumask("0xz").unwrap_err().to_string();
        assert!(msg.contains("'z' is not a hex digit"), "{msg}");
    }

    #[test]
    fn format_round_trips() {
        for cores in [vec![0], vec![0, 1], vec![5, 7], vec![3, 64, 1023]] {
            assert_eq!(parse_cpumask(&format_cpumask(&cores)).unwrap(), cores);
        }
        assert_eq!(format_cpumask(&[0, 1]), "0x3");
    }
}
