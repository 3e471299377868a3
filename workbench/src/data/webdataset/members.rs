//! One member read back by its offset (the lazy half of an indexed shard), and a small ustar
//! writer for fixtures and tests.

use super::BLOCK;
use crate::{Error, Result};
use std::io::Read;
use std::path::Path;

/// Reads `len` bytes at `offset` of `shard` — an image found by
/// [`PairStream::indexing`](super::PairStream::indexing);
/// `name` (`shard.tar/key.jpg`) names it in messages. A shard that changed since it was indexed
/// (now too short) is an error naming the member.
pub fn read_member(shard: &Path, offset: u64, len: u64, name: &Path) -> Result<Vec<u8>> {
    use std::io::{Seek as _, SeekFrom};
    let mut f = std::fs::File::open(shard).map_err(|e| Error::io(shard, e))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| Error::io(shard, e))?;
    let mut data = Vec::new();
    let got = f
        .take(len)
        .read_to_end(&mut data)
        .map_err(|e| Error::io(name, e))?;
    if (got as u64) < len {
        return Err(Error::input(
            name,
            None,
            format!(
                "the shard ends {got} bytes into this {len}-byte member; it changed since it was \
                 indexed"
            ),
        ));
    }
    Ok(data)
}

/// Writes a ustar archive of `members` (name, bytes) — for fixtures and tests.
pub fn write_tar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in members {
        let mut h = [0u8; BLOCK];
        let n = name.as_bytes();
        h[..n.len().min(100)].copy_from_slice(&n[..n.len().min(100)]);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        set_checksum(&mut h);
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    out
}

/// Recomputes the checksum of a 512-byte header in place.
pub fn set_checksum(h: &mut [u8]) {
    if h.len() < BLOCK {
        return;
    }
    h[148..156].fill(b' ');
    let sum: u64 = h[..BLOCK].iter().map(|&b| u64::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}
