//! One outbox record on disk, and decoding a segment's bytes. Pure functions over bytes.
//!
//! ```text
//! record  := len:u32 crc:u32 seq:u64 ts_ms:i64 class:u8 payload[len]      (little-endian)
//! crc     := CRC-32 (IEEE) of len, seq, ts_ms, class and payload
//! segment := magic "IMPOBX01" record*
//! ```

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"IMPOBX01";
/// Bytes before the payload.
pub const HEADER: usize = 4 + 4 + 8 + 8 + 1;
/// Largest payload accepted.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What a record is, which decides how long it survives a full disk: higher classes are kept
/// longer (see [`super::Outbox`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Class {
    /// Raw sensor samples for retraining: dropped first.
    Raw = 0,
    /// Per-interval aggregates of each channel.
    Aggregate = 1,
    /// Drift sketches.
    Sketch = 2,
    /// Alerts.
    Alert = 3,
    /// Events the hub must see (model installs, rollbacks, refusals): dropped last.
    Event = 4,
}

impl Class {
    pub const ALL: [Class; 5] = [Class::Raw, Class::Aggregate, Class::Sketch, Class::Alert, Class::Event];

    pub fn from_u8(v: u8) -> Option<Class> {
        Self::ALL.get(v as usize).copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Raw => "raw",
            Class::Aggregate => "aggregate",
            Class::Sketch => "sketch",
            Class::Alert => "alert",
            Class::Event => "event",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub ts_ms: i64,
    pub class: Class,
    pub payload: Vec<u8>,
}

impl Record {
    pub fn encoded_len(&self) -> usize {
        HEADER + self.payload.len()
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let len = (self.payload.len() as u32).to_le_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&len);
        crc.update(&self.seq.to_le_bytes());
        crc.update(&self.ts_ms.to_le_bytes());
        crc.update(&[self.class as u8]);
        crc.update(&self.payload);
        out.extend_from_slice(&len);
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.ts_ms.to_le_bytes());
        out.push(self.class as u8);
        out.extend_from_slice(&self.payload);
    }
}

/// Why decoding stopped before the end of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The bytes end inside a record: a write cut short (power loss).
    TornTail,
    /// A record's checksum, length or class is wrong.
    Corrupt,
    /// A record's sequence number is not above the one before it.
    OutOfOrder,
}

/// Decodes the record at the start of `buf`. `Ok(None)` at a clean end.
pub fn decode(buf: &[u8]) -> Result<Option<Record>, Damage> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.len() < HEADER {
        return Err(Damage::TornTail);
    }
    let u32_at = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let len = u32_at(0) as usize;
    if len > MAX_PAYLOAD {
        return Err(Damage::Corrupt);
    }
    if buf.len() < HEADER + len {
        return Err(Damage::TornTail);
    }
    let stored_crc = u32_at(4);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&buf[0..4]);
    crc.update(&buf[8..HEADER + len]);
    if crc.finalize() != stored_crc {
        return Err(Damage::Corrupt);
    }
    let class = Class::from_u8(buf[24]).ok_or(Damage::Corrupt)?;
    Ok(Some(Record { seq: u64_at(8), ts_ms: u64_at(16) as i64, class, payload: buf[HEADER..HEADER + len].to_vec() }))
}

/// The valid prefix of a segment body (after the magic): its records, how many bytes they take,
/// and why decoding stopped early, if it did.
pub fn scan(body: &[u8], min_seq: u64) -> (Vec<Record>, usize, Option<Damage>) {
    let mut records = Vec::new();
    let mut pos = 0;
    let mut last = min_seq;
    loop {
        match decode(&body[pos..]) {
            Ok(None) => return (records, pos, None),
            Ok(Some(r)) => {
                if !records.is_empty() && r.seq <= last || records.is_empty() && r.seq < min_seq {
                    return (records, pos, Some(Damage::OutOfOrder));
                }
                last = r.seq;
                pos += r.encoded_len();
                records.push(r);
            }
            Err(d) => return (records, pos, Some(d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, payload: &[u8]) -> Record {
        Record { seq, ts_ms: 1_700_000_000_000 + seq as i64, class: Class::Alert, payload: payload.to_vec() }
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        rec(7, b"hello").encode_into(&mut buf);
        rec(8, b"").encode_into(&mut buf);
        let (records, used, damage) = scan(&buf, 0);
        assert_eq!(records, vec![rec(7, b"hello"), rec(8, b"")]);
        assert_eq!(used, buf.len());
        assert_eq!(damage, None);
    }

    #[test]
    fn a_torn_tail_is_detected_at_every_cut() {
        let mut buf = Vec::new();
        rec(1, b"first").encode_into(&mut buf);
        let first_len = buf.len();
        rec(2, b"second record").encode_into(&mut buf);
        for cut in first_len + 1..buf.len() {
            let (records, used, damage) = scan(&buf[..cut], 0);
            assert_eq!(records.len(), 1, "cut at {cut}");
            assert_eq!(used, first_len);
            assert_eq!(damage, Some(Damage::TornTail));
        }
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let mut buf = Vec::new();
        rec(1, b"payload bytes").encode_into(&mut buf);
        for i in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[i / 8] ^= 1 << (i % 8);
            let (records, _, damage) = scan(&b, 0);
            assert!(records.is_empty() && damage.is_some(), "bit {i} not caught");
        }
    }

    #[test]
    fn sequence_numbers_must_increase() {
        let mut buf = Vec::new();
        rec(5, b"a").encode_into(&mut buf);
        rec(5, b"b").encode_into(&mut buf);
        let (records, _, damage) = scan(&buf, 0);
        assert_eq!(records.len(), 1);
        assert_eq!(damage, Some(Damage::OutOfOrder));
    }
}
