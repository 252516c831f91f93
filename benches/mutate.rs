//! The admission logic without HTTP or TLS: what one `/mutate` and one `/validate` request cost
//! in the handler itself. tools/bench runs this and copies the figures into BENCHMARKS.md.
//!
//! - `mutate/inject` is `inject::mutate` on the JSON of a realistic labelled CronJob (the patch
//!   computation alone; the object it consumes is made outside the timing);
//! - `mutate/review` is the whole handler path: decode the review body,
//!   `admission::mutation_for` (the object as JSON, the patch), encode the response review;
//! - `validate/review` is decode + `admission::validate::validate` on a VolumeBackup review.
//!
//! The `*/step:…` functions time single steps of those paths, so BENCHMARKS.md can say where the
//! time goes (and what the same work costs done differently):
//! - `step:decode_review`: `admission::decode_review` (into `AdmissionRequest<DynamicObject>`);
//! - `step:parse_value`: the same bytes parsed into a plain `serde_json::Value`, for comparison;
//! - `step:object_json`: `admission::object_json`, the decoded `DynamicObject` as a `Value`;
//! - `step:to_value`: the same done by `serde_json::to_value`, for comparison;
//! - `step:encode_response`: `with_patch` plus `admission::encode_review` (patch in base64).

mod fixtures;

use std::hint::black_box;

use backup_operator::admission::{
    decode_review, encode_review, mutation_for, object_json, validate,
};
use backup_operator::inject;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kube::core::admission::AdmissionResponse;

// The allocator the shipped backup-operator binary uses, so these figures are its figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench_mutate(c: &mut Criterion) {
    let review = fixtures::mutate_review().expect("building the CronJob review");
    let body = serde_json::to_vec(&review).expect("encoding the CronJob review");
    let object = review["request"]["object"].clone();
    let cfg = fixtures::injector();
    assert!(
        inject::mutate(object.clone(), &cfg).injected,
        "the fixture must be a CronJob that gets the notifier"
    );

    let mut g = c.benchmark_group("mutate");
    g.bench_function("inject", |b| {
        b.iter_batched(
            || object.clone(),
            |o| inject::mutate(black_box(o), &cfg),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("step:decode_review", |b| {
        b.iter(|| decode_review(black_box(&body)).expect("decodes"))
    });
    g.bench_function("step:parse_value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).expect("parses"))
    });
    let req = decode_review(&body).expect("the fixture decodes");
    let decoded = req.object.as_ref().expect("the review has an object");
    assert_eq!(
        object_json(decoded.clone()).expect("converts"),
        serde_json::to_value(decoded).expect("re-encodes"),
        "object_json must equal serde_json::to_value"
    );
    g.bench_function("step:object_json", |b| {
        b.iter_batched(
            || decoded.clone(),
            |o| object_json(black_box(o)).expect("converts"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("step:to_value", |b| {
        b.iter(|| serde_json::to_value(black_box(decoded)).expect("re-encodes"))
    });
    let patch = inject::mutate(object.clone(), &cfg).patch;
    g.bench_function("step:encode_response", |b| {
        b.iter(|| {
            let resp = AdmissionResponse::from(&req)
                .with_patch(json_patch::Patch(black_box(&patch).clone()))
                .expect("patch encodes");
            encode_review(resp).expect("response encodes")
        })
    });
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("review", |b| {
        b.iter(|| {
            let mut req = decode_review(black_box(&body)).expect("decodes");
            let m = mutation_for(&mut req, &cfg);
            assert!(m.injected);
            let resp = AdmissionResponse::from(&req)
                .with_patch(json_patch::Patch(m.patch))
                .expect("patch encodes");
            encode_review(resp).expect("response encodes")
        })
    });
    g.finish();
}

fn bench_validate(c: &mut Criterion) {
    let body = serde_json::to_vec(&fixtures::validate_review()).expect("encoding the review");
    let policy = fixtures::policy();
    let req = decode_review(&body).expect("the fixture decodes");
    assert!(
        validate::validate(&req, &policy).denials.is_empty(),
        "the fixture must be allowed"
    );

    let mut g = c.benchmark_group("validate");
    g.bench_function("decision", |b| {
        b.iter(|| validate::validate(black_box(&req), &policy))
    });
    g.bench_function("step:decode_review", |b| {
        b.iter(|| decode_review(black_box(&body)).expect("decodes"))
    });
    g.bench_function("step:parse_value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).expect("parses"))
    });
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("review", |b| {
        b.iter(|| {
            let req = decode_review(black_box(&body)).expect("decodes");
            let verdict = validate::validate(&req, &policy);
            let resp = AdmissionResponse::from(&req);
            (verdict, encode_review(resp).expect("encodes"))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_mutate, bench_validate);
criterion_main!(benches);
