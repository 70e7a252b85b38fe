//! Keys of the embedded store: every store is one fjall keyspace, and each
//! of its logical tables a one-byte prefix. Key parts are encoded so that
//! byte order is their natural order, so a range over a prefix walks a
//! table (or an index) in key order:
//!
//! - a string: its bytes with `0x00` escaped as `0x00 0xFF`, then the
//!   terminator `0x00 0x01` (so "a" < "a\0" < "ab", and a string part can be
//!   followed by another part);
//! - `u64`: 8 bytes big-endian; `i64`: the same with the sign bit flipped;
//!   `u8`: one byte.
//!
//! One keyspace per store (not one per table) keeps one memtable per store:
//! fjall's memory grows with memtables × keyspaces.

use std::ops::Range;

use crate::StorageError;

/// A logical table: a key prefix in its store's keyspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// The prefix byte, unique within the store.
    pub id: u8,
    /// Its name, in errors.
    pub name: &'static str,
}

impl Table {
    /// A table with prefix `id`.
    pub const fn new(id: u8, name: &'static str) -> Self {
        Self { id, name }
    }

    /// A key of this table, to build part by part.
    pub fn key(&self) -> KeyBuf {
        KeyBuf(vec![self.id])
    }

    /// The key of a one-string-part key.
    pub fn str_key(&self, s: &str) -> Vec<u8> {
        self.key().str(s).done()
    }

    /// Every key of the table.
    pub fn all(&self) -> Range<Vec<u8>> {
        vec![self.id]..vec![self.id.saturating_add(1)]
    }

    /// The keys of the table that start with `prefix` (built with
    /// [`Table::key`]).
    pub fn starting(&self, prefix: KeyBuf) -> Range<Vec<u8>> {
        let lo = prefix.0;
        let mut hi = lo.clone();
        // The smallest key after every key with this prefix: the prefix's
        // last byte incremented (all parts end below 0xFF: a string part
        // ends with 0x01, numbers are whole).
        while let Some(last) = hi.pop() {
            if last < u8::MAX {
                hi.push(last + 1);
                return lo..hi;
            }
        }
        lo..self.all().end
    }

    /// Reads a key of this table part by part.
    pub fn read<'k>(&self, key: &'k [u8]) -> Result<KeyReader<'k>, StorageError> {
        match key.split_first() {
            Some((id, rest)) if *id == self.id => Ok(KeyReader {
                table: self.name,
                rest,
            }),
            _ => Err(StorageError::Corrupt(format!(
                "a key outside table {}",
                self.name
            ))),
        }
    }
}

/// A key being built.
#[derive(Clone, Debug)]
pub struct KeyBuf(Vec<u8>);

impl KeyBuf {
    /// Appends a string part.
    pub fn str(mut self, s: &str) -> Self {
        for &b in s.as_bytes() {
            if b == 0 {
                self.0.extend_from_slice(&[0, 0xFF]);
            } else {
                self.0.push(b);
            }
        }
        self.0.extend_from_slice(&[0, 1]);
        self
    }

    /// Appends a `u64` part.
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends an `i64` part.
    pub fn i64(self, v: i64) -> Self {
        self.u64(v.cast_unsigned() ^ (1 << 63))
    }

    /// Appends a `u8` part.
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }

    /// The key.
    pub fn done(self) -> Vec<u8> {
        self.0
    }
}

/// A key being read part by part, in the order it was built.
#[derive(Debug)]
pub struct KeyReader<'k> {
    table: &'static str,
    rest: &'k [u8],
}

impl KeyReader<'_> {
    fn corrupt(&self, what: &str) -> StorageError {
        StorageError::Corrupt(format!("a key of table {} has a bad {what}", self.table))
    }

    /// The next string part.
    pub fn str(&mut self) -> Result<String, StorageError> {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            match (self.rest.get(i), self.rest.get(i + 1)) {
                (Some(0), Some(1)) => break,
                (Some(0), Some(0xFF)) => {
                    out.push(0);
                    i += 2;
                }
                (Some(0), _) | (None, _) => return Err(self.corrupt("string part")),
                (Some(&b), _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        self.rest = &self.rest[i + 2..];
        String::from_utf8(out).map_err(|_| self.corrupt("string part"))
    }

    /// The next `u64` part.
    pub fn u64(&mut self) -> Result<u64, StorageError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<8>()
            .ok_or_else(|| self.corrupt("number part"))?;
        self.rest = rest;
        Ok(u64::from_be_bytes(*head))
    }

    /// The next `i64` part.
    pub fn i64(&mut self) -> Result<i64, StorageError> {
        Ok((self.u64()? ^ (1 << 63)).cast_signed())
    }

    /// The next `u8` part.
    pub fn u8(&mut self) -> Result<u8, StorageError> {
        let (&b, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| self.corrupt("byte part"))?;
        self.rest = rest;
        Ok(b)
    }
}

/// A `u64` value.
pub fn u64_value(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

/// Reads a `u64` value.
pub fn read_u64(bytes: &[u8]) -> Result<u64, StorageError> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StorageError::Corrupt("a number value of the wrong size".into()))
}

/// An `i64` value.
pub fn i64_value(v: i64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

/// Reads an `i64` value.
pub fn read_i64(bytes: &[u8]) -> Result<i64, StorageError> {
    bytes
        .try_into()
        .map(i64::from_be_bytes)
        .map_err(|_| StorageError::Corrupt("a number value of the wrong size".into()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const T: Table = Table::new(7, "t");

    proptest! {
        /// Byte order is the parts' order, and every key reads back.
        #[test]
        fn keys_sort_as_their_parts_and_read_back(
            a in any::<String>(), b in any::<String>(), x in any::<i64>(), y in any::<i64>(),
        ) {
            let ka = T.key().str(&a).i64(x).done();
            let kb = T.key().str(&b).i64(y).done();
            prop_assert_eq!(ka.cmp(&kb), (&a, x).cmp(&(&b, y)));
            let mut r = T.read(&ka).expect("the table's key");
            prop_assert_eq!(r.str().expect("string"), a.clone());
            prop_assert_eq!(r.i64().expect("number"), x);
            prop_assert!(T.starting(T.key().str(&a)).contains(&ka));
        }
    }

    #[test]
    fn a_prefix_range_holds_exactly_its_keys() {
        let range = T.starting(T.key().str("ab"));
        assert!(range.contains(&T.key().str("ab").u64(9).done()));
        assert!(!range.contains(&T.key().str("abc").done()));
        assert!(!range.contains(&T.key().str("a").done()));
        assert!(T.all().contains(&T.key().str("zz").done()));
        assert!(!T.all().contains(&Table::new(8, "u").key().done()));
    }
}
