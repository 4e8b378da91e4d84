//! Codec and dataset benchmarks: packet encoding (JSON, MessagePack; 142 channels), frame
//! build, packet-table row lookup, synthetic dataset generation and binning.
//!
//! `cargo bench --bench codec`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use phantomlink::codec::{encode_data, DataPacket, Frame, WireFormat};
use phantomlink::dataset::synthetic::{generate, SyntheticConfig};
use phantomlink::dataset::PacketTable;

fn table() -> Arc<PacketTable> {
    Arc::new(PacketTable::new(generate(&SyntheticConfig::default())).expect("synthetic table"))
}

/// A bin inside a trial, so every field (intention, trial ids) is present, as in most packets.
fn packet(table: &PacketTable) -> DataPacket<'_> {
    let bin = (0..table.num_bins() as u32)
        .find(|&b| table.row(b).trial_id.is_some() && b > 1000)
        .expect("a bin inside a trial");
    DataPacket {
        timestamp: 1_767_225_600.025,
        sequence_number: 123_456,
        row: table.row(bin),
        channel_ids: table.channel_ids(),
    }
}

fn encoding(c: &mut Criterion) {
    let table = table();
    let packet = packet(&table);
    let mut group = c.benchmark_group("encode");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    for format in WireFormat::ALL {
        let mut out = Vec::with_capacity(4096);
        encode_data(format, &packet, &mut out).unwrap();
        group.throughput(Throughput::Bytes(out.len() as u64));
        group.bench_function(format.name(), |b| {
            b.iter(|| {
                out.clear();
                encode_data(format, black_box(&packet), &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("frame_build");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    for format in WireFormat::ALL {
        let mut frame = Frame::with_capacity(2048);
        group.bench_function(format.name(), |b| {
            b.iter(|| {
                frame
                    .build(format.opcode(), |buf| {
                        encode_data(format, black_box(&packet), buf)
                    })
                    .unwrap();
                black_box(frame.bytes().len())
            })
        });
    }
    group.finish();
}

fn row_lookup(c: &mut Criterion) {
    let table = table();
    let bins = table.num_bins() as u32;
    let mut group = c.benchmark_group("packet_table");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    let mut bin = 0u32;
    group.bench_function("row_lookup", |b| {
        b.iter(|| {
            bin = (bin + 7919) % bins;
            black_box(table.row(black_box(bin)))
        })
    });
    group.finish();
}

fn dataset(c: &mut Criterion) {
    let mut group = c.benchmark_group("dataset");
    group
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(10);
    let config = SyntheticConfig::default();
    group.bench_function("synthetic_generate", |b| {
        b.iter(|| black_box(generate(black_box(&config))))
    });
    let recording = generate(&config);
    group.bench_function("packet_table_build", |b| {
        b.iter_batched(
            || recording.clone(),
            |rec| black_box(PacketTable::new(rec).unwrap()),
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, encoding, row_lookup, dataset);
criterion_main!(benches);
