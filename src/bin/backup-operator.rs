//! `backup-operator`: admission webhooks and controller for VolumeBackup and S3Backup.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use backup_operator::{certs, crd, logging, names, serve, webhook_config};

// Admission requests are allocation-heavy (JSON trees in and out); under load glibc's and
// especially musl's malloc took ~40% of the CPU (BENCHMARKS.md, callgrind). The notifier keeps
// the system allocator: it allocates little and stays small.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Trustworthy webhook notifications for VolumeBackup and S3Backup.
///
/// One binary, three jobs: a validating webhook that rejects bad webhook URLs at admission time,
/// a mutating webhook that injects the notifier into backup CronJobs, and a controller that turns
/// each VolumeBackup and S3Backup into a restic backup CronJob.
///
/// Exit status: 0 on success (for serve: stopped by a signal after draining); 1 with a one-line
/// error; 2 for invalid arguments; serve also exits 70 when its controller ended before
/// shutdown (a bug: the pod restarts, visibly) and 128+N on a second signal N during the drain.
#[derive(Parser)]
#[command(name = "backup-operator", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: logging::LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the admission webhooks (HTTPS) and the admin port, and run the controller.
    Serve(Box<serve::ServeArgs>),
    /// Print both CustomResourceDefinitions as YAML (manifests/crds/ is this output).
    Crds,
    /// Print the Validating- and MutatingWebhookConfiguration as YAML (manifests/install/webhooks.yaml is
    /// this output for the in-cluster Service).
    Webhooks(WebhooksArgs),
    /// Certificates for development and tests.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write a new CA (ca.crt, ca.key) and a serving certificate signed by it (tls.crt, tls.key)
    /// into a directory. For development: in a cluster the operator manages its own certificates.
    Generate(GenerateArgs),
}

#[derive(clap::Args)]
struct WebhooksArgs {
    /// Reach the webhooks through this Service (port 443)…
    #[arg(long, default_value = "backup-operator", conflicts_with = "url", value_parser = names::label)]
    service: String,
    /// …in this namespace, which is also excluded from both webhooks with kube-system.
    #[arg(long, default_value = "backup-operator-system", value_parser = names::label)]
    namespace: String,
    /// Reach the webhooks at this base URL instead (development), e.g. https://127.0.0.1:8443.
    #[arg(long, value_parser = webhook_config::parse_base_url)]
    url: Option<String>,
    /// PEM file of the CA to put into caBundle (default: left empty, to be injected). Only its
    /// certificates are taken; a file without one is refused.
    #[arg(long, value_name = "PATH")]
    ca_bundle_file: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Directory to write ca.crt, ca.key, tls.crt and tls.key into (created if missing).
    #[arg(long, value_name = "DIR")]
    out_dir: std::path::PathBuf,
    /// DNS name for the serving certificate. Repeatable.
    #[arg(long = "dns", value_name = "NAME", value_parser = names::host_name)]
    dns_names: Vec<String>,
    /// IP address for the serving certificate. Repeatable.
    #[arg(long = "ip", value_name = "IP")]
    ips: Vec<std::net::IpAddr>,
    /// Adds the in-cluster names of this Service (svc, svc.ns, svc.ns.svc, ….cluster.local).
    #[arg(long, value_name = "NAME", requires = "namespace", value_parser = names::label)]
    service: Option<String>,
    /// Namespace of --service.
    #[arg(long, value_name = "NS", value_parser = names::label, requires = "service")]
    namespace: Option<String>,
    /// Validity of both certificates, 1s to 876000h.
    #[arg(long, default_value = "8760h", value_parser = serve::parse_validity)]
    valid_for: std::time::Duration,
    /// Replace a set already in DIR (its CA and key are lost); without it an existing file is
    /// refused.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(&cli.log);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            backup_operator::errors::say(format_args!("backup-operator: error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Writes generated YAML to stdout. A reader that closed the pipe early (`| head`) got what it
/// wanted: that is not an error, and never a panic.
fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("writing to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Crds => emit(&crd::crds_yaml()?),
        Command::Webhooks(a) => {
            let ca_bundle = match &a.ca_bundle_file {
                Some(p) => {
                    let pem = backup_operator::pem_file::read(p)
                        .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
                    // Certificates only: a key in the file must not end up in a cluster-wide
                    // readable object, and a file without a certificate would make every call
                    // to the webhooks fail TLS.
                    let bundle = certs::pem_bundle([pem.as_slice()]);
                    if bundle.is_empty() {
                        anyhow::bail!("{} holds no PEM certificate", p.display());
                    }
                    Some(bundle.into_bytes())
                }
                None => None,
            };
            let endpoint = match a.url {
                Some(url) => webhook_config::Endpoint::Url(url),
                None => webhook_config::Endpoint::Service {
                    name: a.service,
                    namespace: a.namespace.clone(),
                },
            };
            let settings = webhook_config::WebhookSettings {
                endpoint,
                ca_bundle,
                excluded_namespaces: webhook_config::excluded_namespaces(&a.namespace),
            };
            emit(&webhook_config::yaml(&settings)?)
        }
        Command::Cert(CertCommand::Generate(a)) => {
            let mut dns = a.dns_names;
            if let (Some(svc), Some(ns)) = (&a.service, &a.namespace) {
                dns.extend(certs::service_dns_names(svc, ns));
            }
            if dns.is_empty() && a.ips.is_empty() {
                anyhow::bail!(
                    "give at least one --dns, --ip or --service for the serving certificate"
                );
            }
            let ca = certs::generate_ca("backup-operator-ca", a.valid_for)?;
            let serving = certs::issue_serving(&ca, &dns, &a.ips, a.valid_for)?;
            certs::write_dir(&a.out_dir, &ca, &serving, a.force)?;
            backup_operator::errors::say(format_args!(
                "wrote ca.crt, ca.key, tls.crt, tls.key to {} (names: {}; IPs: {})",
                a.out_dir.display(),
                dns.join(", "),
                a.ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            Ok(())
        }
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve::run(*args)),
    }
}
