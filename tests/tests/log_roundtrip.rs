//! Any event stream round-trips through writer and reader unchanged,
//! across frames and segment rotations.

use deja_recorder::{LogEnd, LogWriter, RunMeta, RunReader, WriterConfig};
use deja_tests::arb_event_stream;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_stream_round_trips_across_rotations(
        events in arb_event_stream(400),
        batch in 1usize..50,
        segment_bytes_max in 200u64..4000,
    ) {
        let out = tempfile::tempdir().unwrap();
        let config = WriterConfig { segment_bytes_max, ..WriterConfig::default() };
        let mut writer = LogWriter::create(out.path(), RunMeta::new("prop", "run"), config).unwrap();
        for chunk in events.chunks(batch) {
            writer.write(chunk).unwrap();
        }
        let dir = writer.dir().to_path_buf();
        let totals = writer.finish().unwrap();
        prop_assert_eq!(totals.events, events.len() as u64);

        let mut reader = RunReader::open(&dir).unwrap();
        let read: Vec<_> = reader.by_ref().collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(&read, &events);
        prop_assert_eq!(reader.end(), Some(&LogEnd::Clean));
        prop_assert_eq!(reader.stats().segments, totals.segments);
        prop_assert_eq!(reader.stats().frames, totals.frames);
    }
}

#[test]
fn rotation_really_happens_and_every_segment_is_read() {
    let out = tempfile::tempdir().unwrap();
    let kinds = deja_tests::sample_events(2000);
    let config = WriterConfig {
        segment_bytes_max: 2048,
        ..WriterConfig::default()
    };
    let dir = deja_tests::write_run(out.path(), &kinds, config);
    let segments = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|entry| entry.as_ref().unwrap().path().extension() == Some("deja".as_ref()))
        .count();
    assert!(segments > 5, "expected rotation, got {segments} segment(s)");
    let (events, end) = deja_tests::read_run(&dir);
    assert_eq!(end.unwrap(), LogEnd::Clean);
    assert_eq!(events, deja_tests::number(&kinds));
}
