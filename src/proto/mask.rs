//! Masking (RFC 6455 §5.3): the fast word-at-a-time routine, its byte-by-byte
//! reference, and the replaceable generator of client masking keys.

use rand::{RngCore, SeedableRng, rngs::StdRng};

/// XORs `data` with the 4-byte `key`, starting at position `offset` (mod 4) of the key,
/// and returns the key offset for the byte after `data`. This is the reference
/// implementation: one byte at a time, exactly as RFC 6455 §5.3 states it.
pub fn apply_mask_reference(data: &mut [u8], key: [u8; 4], offset: usize) -> usize {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[(offset + i) & 3];
    }
    (offset + data.len()) & 3
}

/// XORs `data` with the 4-byte `key` starting at key position `offset`, in place, and
/// returns the key offset for the byte after `data`. Equal to
/// [`apply_mask_reference`], but works on 8-byte words so the compiler vectorizes it.
#[inline]
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) -> usize {
    let end = (offset + data.len()) & 3;
    // The key rotated so that data[0] lines up with key[offset], repeated to a word.
    let kb: [u8; 4] = std::array::from_fn(|i| key[(offset + i) & 3]);
    let wide = u64::from_ne_bytes([kb[0], kb[1], kb[2], kb[3], kb[0], kb[1], kb[2], kb[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let w = u64::from_ne_bytes((&*chunk).try_into().expect("8-byte chunk")) ^ wide;
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= kb[i & 3];
    }
    end
}

/// Copies `src` to the end of `dst` while unmasking it: the one copy that moves a
/// payload into its message, fused with the XOR. Returns the next key offset.
#[inline]
pub fn extend_unmasked(dst: &mut Vec<u8>, src: &[u8], key: Option<[u8; 4]>, offset: usize) -> usize {
    let start = dst.len();
    dst.extend_from_slice(src);
    match key {
        Some(key) => apply_mask(&mut dst[start..], key, offset),
        None => offset,
    }
}

/// A source of client masking keys (Qt's `setMaskGenerator`). RFC 6455 §5.3 requires
/// keys that are unpredictable to the application; the default is a CSPRNG.
pub trait MaskGenerator: Send {
    /// Returns the next 32-bit masking key.
    fn next_key(&mut self) -> [u8; 4];
}

/// The default mask generator: `rand`'s `StdRng` (a ChaCha CSPRNG) seeded once
/// from the operating system when the generator is created.
pub struct RandomMaskGenerator(StdRng);

impl std::fmt::Debug for RandomMaskGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The generator's state is a secret: it predicts every future key.
        f.write_str("RandomMaskGenerator")
    }
}

impl RandomMaskGenerator {
    /// Creates a generator seeded from the operating system's entropy source.
    pub fn new() -> Self {
        Self(StdRng::from_os_rng())
    }

    /// Creates a deterministic generator from a seed (tests, simulations).
    pub fn from_seed(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }
}

impl Default for RandomMaskGenerator {
    fn default() -> Self {
        Self::new()
    }
}

impl MaskGenerator for RandomMaskGenerator {
    fn next_key(&mut self) -> [u8; 4] {
        self.0.next_u32().to_ne_bytes()
    }
}

/// A generator that returns the same key every time. Only for tests and test
/// vectors (RFC 6455 §5.7 uses `37 fa 21 3d`); never use it against a real server.
#[derive(Clone, Copy, Debug)]
pub struct FixedMaskGenerator(pub [u8; 4]);

impl MaskGenerator for FixedMaskGenerator {
    fn next_key(&mut self) -> [u8; 4] {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_equals_reference_for_all_offsets_and_lengths() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..70 {
            for off in 0..4 {
                let orig: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(31)).collect();
                let mut a = orig.clone();
                let mut b = orig.clone();
                let ea = apply_mask(&mut a, key, off);
                let eb = apply_mask_reference(&mut b, key, off);
                assert_eq!(a, b, "len {len} off {off}");
                assert_eq!(ea, eb);
            }
        }
    }

    #[test]
    fn rfc_5_7_masked_hello() {
        let mut p = *b"Hello";
        apply_mask(&mut p, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(p, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }
}
