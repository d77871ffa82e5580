//! FNV-1a, 64 bit: the one stable hash behind branch ids, loop detection, stateless tags
//! and the dispatcher's Call-ID rendezvous. Its values are pinned (they must agree across
//! builds, platforms and the pods of a rolling upgrade), so it is written out here
//! rather than taken from a hasher whose output may change.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// A running FNV-1a hash.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(OFFSET)
    }
}

impl Fnv1a {
    /// The empty hash.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(PRIME);
        }
        self
    }

    /// Feed one field of several, followed by a 0xff separator, so that `("ab", "c")` and
    /// `("a", "bc")` differ (0xff never occurs in UTF-8 text).
    pub fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.write(bytes).write(&[0xff])
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// FNV-1a of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    Fnv1a::new().write(bytes).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_test_vectors() {
        // From the FNV reference (draft-eastlake-fnv): FNV-1a 64 of "" and "a", "foobar".
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn fields_are_separated() {
        let ab_c = Fnv1a::new().field(b"ab").field(b"c").finish();
        let a_bc = Fnv1a::new().field(b"a").field(b"bc").finish();
        assert_ne!(ab_c, a_bc);
    }
}
