//! `backup-notifier`: see `backup_operator::notifier` and `backup-notifier --help`.

fn main() -> std::process::ExitCode {
    backup_operator::notifier::cli::main()
}
