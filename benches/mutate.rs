//! The admission logic without HTTP or TLS: what one `/mutate` and one `/validate` request cost
//! in the handler itself. tools/bench runs this and copies the figures into BENCHMARKS.md.
//!
//! - `mutate/inject` is `inject::mutate` on the injector's view of a realistic labelled CronJob
//!   (`inject::CRON_JOB_VIEW`, as the handler has it; the patch computation alone, the object it
//!   consumes is made outside the timing);
//! - `mutate/review` is the whole handler path: `admission::decode_mutate_review`,
//!   `admission::mutation_for` (the patch), the answer with the patch encoded;
//! - `validate/decision` is `admission::validate::validate` on a decoded VolumeBackup review: the
//!   typed view of the object (kept raw by the review's decode) and the checks;
//! - `validate/review` is decode + `admission::validate::validate` + the answer encoded.
//!
//! The `*/step:…` functions time single steps of those paths, so BENCHMARKS.md can say where the
//! time goes (and what the same work costs done differently):
//! - `step:decode_review`: the review as `/mutate` reads it (`admission::decode_mutate_review`,
//!   the injector's view of the object as a `Value`) and as `/validate` does
//!   (`admission::decode_validate_review`, the objects kept as raw JSON);
//! - `step:decode_dynamic`: the decode both webhooks no longer do, for comparison: kube-core's
//!   `AdmissionReview<DynamicObject>` (for `/mutate` with `serde_json::to_value` of the object,
//!   which the injector needed);
//! - `step:parse_value`: the same bytes parsed into a plain `serde_json::Value`, for comparison;
//! - `step:encode_response`: the answer with the patch (base64) encoded.

mod fixtures;

use std::hint::black_box;

use backup_operator::admission::{
    Answer, decode_mutate_review, decode_validate_review, mutation_for, validate,
};
use backup_operator::inject;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;

fn decode_dynamic(body: &[u8]) -> AdmissionReview<DynamicObject> {
    serde_json::from_slice(body).expect("decodes")
}

// The allocator the shipped backup-operator binary uses, so these figures are its figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench_mutate(c: &mut Criterion) {
    let review = fixtures::mutate_review().expect("building the CronJob review");
    let body = serde_json::to_vec(&review).expect("encoding the CronJob review");
    let cfg = fixtures::injector();
    let full = inject::mutate(review["request"]["object"].clone(), &cfg);
    assert!(
        full.injected(),
        "the fixture must be a CronJob that gets the notifier"
    );
    let object = decode_mutate_review(&body)
        .expect("the fixture decodes")
        .object
        .expect("the review has an object")
        .0;
    assert_eq!(
        inject::mutate(object.clone(), &cfg).patch,
        full.patch,
        "the injector's view must yield the patch the whole object does"
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
        b.iter(|| decode_mutate_review(black_box(&body)).expect("decodes"))
    });
    g.bench_function("step:decode_dynamic", |b| {
        b.iter(|| {
            let review = decode_dynamic(black_box(&body));
            let req = review.request.expect("the review has a request");
            serde_json::to_value(req.object.expect("the review has an object")).expect("converts")
        })
    });
    g.bench_function("step:parse_value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).expect("parses"))
    });
    let req = decode_mutate_review(&body).expect("the fixture decodes");
    let patch = json_patch::Patch(full.patch);
    g.bench_function("step:encode_response", |b| {
        b.iter(|| {
            Answer::allow(&req.uid)
                .with_patch(black_box(&patch))
                .expect("patch encodes")
                .encode()
                .expect("response encodes")
        })
    });
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("review", |b| {
        b.iter(|| {
            let mut req = decode_mutate_review(black_box(&body)).expect("decodes");
            let m = mutation_for(&mut req, &cfg);
            assert!(m.injected());
            Answer::allow(&req.uid)
                .with_warnings(m.warnings)
                .with_patch(&json_patch::Patch(m.patch))
                .expect("patch encodes")
                .encode()
                .expect("response encodes")
        })
    });
    g.finish();
}

fn bench_validate(c: &mut Criterion) {
    let body = serde_json::to_vec(&fixtures::validate_review()).expect("encoding the review");
    let policy = fixtures::policy();
    let req = decode_validate_review(&body).expect("the fixture decodes");
    assert!(
        validate::validate(&req, &policy).denials.is_empty(),
        "the fixture must be allowed"
    );

    let mut g = c.benchmark_group("validate");
    g.bench_function("decision", |b| {
        b.iter(|| validate::validate(black_box(&req), &policy))
    });
    g.bench_function("step:decode_review", |b| {
        b.iter(|| decode_validate_review(black_box(&body)).expect("decodes"))
    });
    g.bench_function("step:decode_dynamic", |b| {
        b.iter(|| decode_dynamic(black_box(&body)))
    });
    g.bench_function("step:parse_value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).expect("parses"))
    });
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("review", |b| {
        b.iter(|| {
            let req = decode_validate_review(black_box(&body)).expect("decodes");
            let verdict = validate::validate(&req, &policy);
            let answer = Answer::allow(&req.uid).with_warnings(verdict.warnings);
            answer.encode().expect("encodes")
        })
    });
    g.finish();
}

criterion_group!(benches, bench_mutate, bench_validate);
criterion_main!(benches);
