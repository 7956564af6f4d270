//! The `kiln` binary: CLI wiring only.

#[cfg(feature = "bench")]
mod bench;
mod cli;
mod config;
mod process;
mod server;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use config::Settings;

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(not(feature = "bench"))]
    if let Some(Command::Bench { .. }) = cli.command {
        eprintln!("{}", cli::NO_BENCH);
        return ExitCode::from(2);
    }
    let settings = match Settings::load(cli.config.as_deref(), &cli::env_vars()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kiln: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = match telemetry::init(&settings.log, &settings.telemetry) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kiln: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = cli.command.unwrap_or(Command::All);
    let result = runtime.block_on(async move {
        match command {
            Command::All => process::run(settings, process::Roles::ALL).await,
            Command::Serve => process::run(settings, process::Roles::SERVE).await,
            Command::Work => process::run(settings, process::Roles::WORK).await,
            Command::Schedule { list: true } => process::list_schedule(settings).await,
            Command::Schedule { list: false } => {
                process::run(settings, process::Roles::SCHEDULE).await
            }
            Command::Migrate => process::migrate(settings).await,
            Command::User(command) => process::user(settings, command).await,
            Command::Keys(command) => process::keys(settings, command).await,
            #[cfg(feature = "bench")]
            Command::Bench(args) => bench::run(settings, args).await,
            // Answered before the settings were loaded.
            #[cfg(not(feature = "bench"))]
            Command::Bench { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "kiln stopped with an error");
            eprintln!("kiln: {e:#}");
            ExitCode::FAILURE
        }
    }
}
