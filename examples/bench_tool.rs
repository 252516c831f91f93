//! The load side of `tools/bench` (not part of the operator):
//!
//! - `bench_tool bodies DIR` writes the request bodies the HTTP load generator sends:
//!   `validate.json` (a VolumeBackup review), `mutate.json` (a labelled CronJob review with the
//!   restic pod template), `payload.json` (a notification, for the curl comparison) and
//!   `cronjob.json` (the CronJob alone, to check that the mutating webhook acts).
//! - `bench_tool creates --kind volumebackup|cronjob|cronjob-injected --count N --concurrency C
//!   --namespace NS` creates N objects through the Kubernetes API (KUBECONFIG), C at a time, and
//!   prints one JSON line with the per-request latency percentiles the client observed. The
//!   apiserver part of tools/bench runs it with and without the webhooks registered.
//!   `cronjob-injected` is the labelled CronJob with the notifier already injected here (what
//!   the mutating webhook makes of it): created without webhooks, it separates the cost of
//!   storing the larger object from the cost of the webhook calls.

#[path = "../benches/fixtures/mod.rs"]
mod fixtures;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use backup_operator::contract::{BackupKind, Outcome, Payload};
use backup_operator::crd::VolumeBackup;
use backup_operator::inject;
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::CronJob;
use kube::api::{Api, PostParams};

#[derive(Parser)]
#[command(about = "Load tool of tools/bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write validate.json, mutate.json and payload.json into DIR.
    Bodies { dir: PathBuf },
    /// Create objects through the API and report the latency of each create.
    Creates(CreatesArgs),
}

#[derive(clap::Args)]
struct CreatesArgs {
    #[arg(long, value_enum)]
    kind: Kind,
    #[arg(long, default_value_t = 500)]
    count: usize,
    #[arg(long, default_value_t = 20)]
    concurrency: usize,
    #[arg(long)]
    namespace: String,
    /// Object names are PREFIX-NNNN (one namespace can hold several runs).
    #[arg(long, default_value = "bench")]
    prefix: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Volumebackup,
    Cronjob,
    CronjobInjected,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Bodies { dir } => bodies(&dir),
        Command::Creates(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(creates(args)),
    }
}

fn bodies(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let payload = Payload::new(
        BackupKind::VolumeBackup,
        Outcome::Success,
        "databases-postgres-data",
        "postgres-data",
    );
    for (name, body) in [
        (
            "validate.json",
            serde_json::to_vec(&fixtures::validate_review())?,
        ),
        (
            "mutate.json",
            serde_json::to_vec(&fixtures::mutate_review()?)?,
        ),
        ("payload.json", serde_json::to_vec(&payload)?),
        (
            "cronjob.json",
            serde_json::to_vec(&fixtures::cron_job("canary", "default", 0)?)?,
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, &body).with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "bench_tool: wrote {} ({} bytes)",
            path.display(),
            body.len()
        );
    }
    Ok(())
}

async fn creates(a: CreatesArgs) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("configuring a Kubernetes client from KUBECONFIG")?;
    let vbs: Api<VolumeBackup> = Api::namespaced(client.clone(), &a.namespace);
    let cjs: Api<CronJob> = Api::namespaced(client, &a.namespace);
    // Objects are built before the clock starts, so only the API call is timed.
    let mut objects = Vec::with_capacity(a.count);
    for i in 0..a.count {
        let name = format!("{}-{i:04}", a.prefix);
        objects.push(match a.kind {
            Kind::Volumebackup => serde_json::from_value::<VolumeBackup>(fixtures::volume_backup(
                &name,
                &a.namespace,
                i,
            ))
            .map(|vb| Object::VolumeBackup(Box::new(vb)))?,
            Kind::Cronjob => {
                serde_json::from_value::<CronJob>(fixtures::cron_job(&name, &a.namespace, i)?)
                    .map(|cj| Object::CronJob(Box::new(cj)))?
            }
            Kind::CronjobInjected => {
                let cj = fixtures::cron_job(&name, &a.namespace, i)?;
                let injected = inject::mutate(cj, &fixtures::injector())
                    .object
                    .context("the fixture CronJob was not injected")?;
                serde_json::from_value::<CronJob>(injected)
                    .map(|cj| Object::CronJob(Box::new(cj)))?
            }
        });
    }
    let pp = PostParams::default();
    let started = Instant::now();
    let results: Vec<Result<Duration, kube::Error>> = futures::stream::iter(objects)
        .map(|object| {
            let (vbs, cjs, pp) = (&vbs, &cjs, &pp);
            async move {
                let t = Instant::now();
                match object {
                    Object::VolumeBackup(vb) => vbs.create(pp, &vb).await.map(|_| ()),
                    Object::CronJob(cj) => cjs.create(pp, &cj).await.map(|_| ()),
                }?;
                Ok(t.elapsed())
            }
        })
        .buffer_unordered(a.concurrency.max(1))
        .collect()
        .await;
    let wall = started.elapsed();

    let mut errors = Vec::new();
    let mut ms: Vec<f64> = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok(d) => ms.push(d.as_secs_f64() * 1e3),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if let Some(first) = errors.first() {
        eprintln!(
            "bench_tool: {} of {} creates failed; first: {first}",
            errors.len(),
            a.count
        );
    }
    if ms.is_empty() {
        bail!("no create succeeded");
    }
    ms.sort_by(f64::total_cmp);
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    println!(
        "{}",
        serde_json::json!({
            "kind": match a.kind {
                Kind::Volumebackup => "VolumeBackup",
                Kind::Cronjob => "CronJob",
                Kind::CronjobInjected => "CronJob (injected)",
            },
            "count": a.count,
            "concurrency": a.concurrency,
            "ok": ms.len(),
            "errors": errors.len(),
            "wall_s": wall.as_secs_f64(),
            "rps": ms.len() as f64 / wall.as_secs_f64(),
            "mean_ms": mean,
            "p50_ms": percentile(&ms, 0.50),
            "p90_ms": percentile(&ms, 0.90),
            "p99_ms": percentile(&ms, 0.99),
            "max_ms": ms[ms.len() - 1],
        })
    );
    Ok(())
}

// Boxed: both are large, and a list of 500 is built before the clock starts.
enum Object {
    VolumeBackup(Box<VolumeBackup>),
    CronJob(Box<CronJob>),
}

/// Nearest-rank percentile of sorted, non-empty samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
