//! A dataset's Parquet files may come from a hub (`impeller dataset pull`): arbitrary bytes
//! decoded as a part of two channels, labelled or not, must give a part or an error, never a
//! panic; a part that decodes has one value per channel in every frame and one label per frame.
#![no_main]

use impeller_core::Channel;
use impeller_pipeline::dataset::decode_part;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let channels = [Channel::new("flow", "L/min"), Channel::new("pressure", "bar")];
    for labelled in [false, true] {
        if let Ok(part) = decode_part(data.to_vec(), "fuzz.parquet", "p", &channels, labelled, 100_000) {
            assert!(part.frames.iter().all(|f| f.values.len() == channels.len()));
            assert_eq!(part.labels.map(|l| l.len()), labelled.then_some(part.frames.len()));
        }
    }
});
