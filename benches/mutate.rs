//! The admission logic without HTTP or TLS: what one `/mutate` and one `/validate` request cost
//! in the handler itself. tools/bench runs this and copies the figures into BENCHMARKS.md.
//!
//! - `mutate/inject` is `inject::mutate` on the JSON of a realistic labelled CronJob (the patch
//!   computation alone);
//! - `mutate/review` is the whole handler path: decode the review body, re-encode the object as
//!   JSON (as the handler does), compute the patch, encode the response review;
//! - `validate/review` is decode + `admission::validate::validate` on a VolumeBackup review.

mod fixtures;

use std::hint::black_box;

use backup_operator::admission::{decode_review, validate};
use backup_operator::inject;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kube::core::admission::AdmissionResponse;

fn bench_mutate(c: &mut Criterion) {
    let review = fixtures::mutate_review().expect("building the CronJob review");
    let body = serde_json::to_vec(&review).expect("encoding the CronJob review");
    let object = review["request"]["object"].clone();
    let cfg = fixtures::injector();
    assert!(
        inject::mutate(&object, &cfg).injected,
        "the fixture must be a CronJob that gets the notifier"
    );

    let mut g = c.benchmark_group("mutate");
    g.bench_function("inject", |b| {
        b.iter(|| inject::mutate(black_box(&object), &cfg))
    });
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("review", |b| {
        b.iter(|| {
            let req = decode_review(black_box(&body)).expect("decodes");
            let json = serde_json::to_value(req.object.as_ref().expect("has an object"))
                .expect("re-encodes");
            let m = inject::mutate(&json, &cfg);
            let resp = AdmissionResponse::from(&req)
                .with_patch(json_patch::Patch(m.patch))
                .expect("patch encodes");
            serde_json::to_vec(&resp.into_review()).expect("response encodes")
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
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("review", |b| {
        b.iter(|| {
            let req = decode_review(black_box(&body)).expect("decodes");
            let verdict = validate::validate(&req, &policy);
            let resp = AdmissionResponse::from(&req);
            (
                verdict,
                serde_json::to_vec(&resp.into_review()).expect("encodes"),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench_mutate, bench_validate);
criterion_main!(benches);
