//! `cpn-agent`: the daemon that runs on every cpn router and host.

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use cpn_agent::{
    agent::Agent,
    config,
    dataplane::{Dataplane, Hook},
};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "cpn-agent", version, about = "cpn compute-aware SRv6 agent")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// Validate a configuration file and exit (status 0 if valid).
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the data plane, attach it to the configured interfaces, and run until SIGINT/SIGTERM.
    Run {
        /// The agent's TOML configuration.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    match run_cli() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole cause chain on one line; no backtrace for user errors.
            eprintln!("cpn-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cli() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match (cli.check_config, cli.command) {
        (Some(path), _) => {
            let config = config::load(&path)?;
            // Warnings, not errors: this host's routes may differ from where it will run.
            let paths = config.remotes.iter().filter_map(|remote| {
                let node = cpn_agent::agent::static_node(&config, remote);
                let first = *node.segments.first()?;
                Some((remote.name.clone(), first, node.encap_len()))
            });
            match cpn_agent::dataplane::kernel::encap_mtu_warnings_now(paths) {
                Ok(warnings) => warnings.iter().for_each(|w| eprintln!("warning: {w}")),
                Err(error) => eprintln!("note: egress MTUs not checked: {error:#}"),
            }
            let steering = config.steering_interfaces();
            match cpn_agent::dataplane::kernel::xdp_steer_on_veth_warnings_now(steering) {
                Ok(warnings) => warnings.iter().for_each(|w| eprintln!("warning: {w}")),
                Err(error) => eprintln!("note: interface kinds not checked: {error:#}"),
            }
            let egress = config.interfaces_at(Hook::TcEgress);
            for warning in cpn_agent::dataplane::kernel::tc_egress_forwarding_warnings(egress) {
                eprintln!("warning: {warning}");
            }
            println!("{}: ok", path.display());
            Ok(())
        }
        (None, Some(Command::Run { config })) => run(&config),
        (None, None) => {
            anyhow::bail!("nothing to do: use `cpn-agent run --config FILE` (see --help)")
        }
    }
}

fn run(config_path: &std::path::Path) -> Result<()> {
    let config = config::load(config_path)?;
    let pinning = config.pinning();
    let mut dataplane = Dataplane::load_with(&pinning, &config.load_options())?;
    tracing::info!(node = %config.node.name, ?pinning, "data plane loaded");

    let attached = config.interfaces.iter().try_for_each(|interface| {
        let name = interface.name.get_ref();
        match *interface.hook.get_ref() {
            Hook::Xdp => {
                dataplane.attach(interface.program, name, interface.mode)?;
                tracing::info!(program = %interface.program, interface = %name, mode = interface.mode.name(), "attached");
            }
            hook => {
                dataplane.attach_tc(name, hook)?;
                tracing::info!(program = %interface.program, interface = %name, %hook, "attached");
            }
        }
        anyhow::Ok(())
    });
    let configured: Vec<_> = config
        .interfaces
        .iter()
        .map(|i| (i.program, *i.hook.get_ref(), i.name.get_ref().as_str()))
        .collect();
    if let Err(error) = attached.and_then(|()| Ok(dataplane.detach_unconfigured(&configured)?)) {
        // Leave no interface half-configured.
        dataplane.detach_all()?;
        return Err(error);
    }
    match cpn_agent::dataplane::kernel::xdp_steer_on_veth_warnings_now(config.steering_interfaces())
    {
        Ok(warnings) => warnings.iter().for_each(|w| tracing::warn!("{w}")),
        Err(error) => tracing::debug!(error = %format!("{error:#}"), "interface kinds not checked"),
    }
    let egress = config.interfaces_at(Hook::TcEgress);
    for warning in cpn_agent::dataplane::kernel::tc_egress_forwarding_warnings(egress) {
        tracing::warn!("{warning}");
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut dataplane = runtime.block_on(serve(dataplane, &config, config_path))?;
    if config.dataplane.keep_attached_on_exit {
        dataplane.leave_attached();
    } else {
        dataplane.detach_all()?;
    }
    Ok(())
}

/// Runs the agent until SIGINT or SIGTERM; SIGHUP reloads the configuration (a bad one is
/// reported and the running one kept).
async fn serve(
    dataplane: Dataplane,
    config: &config::Config,
    path: &std::path::Path,
) -> Result<Dataplane> {
    let mut agent = Agent::start(dataplane, config).await?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    // systemd (`Type=notify`) starts what depends on us now; a no-op outside systemd.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    // Labs and tests wait for this line (cpn_tests::lab::AGENT_READY).
    tracing::info!(
        "cpn-agent running; SIGINT or SIGTERM stops it, SIGHUP reloads its configuration"
    );
    loop {
        tokio::select! {
            _ = interrupt.recv() => break tracing::info!(signal = "SIGINT", "shutting down"),
            _ = terminate.recv() => break tracing::info!(signal = "SIGTERM", "shutting down"),
            _ = hangup.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                match config::load(path) {
                    Ok(new) => match agent.reconcile(&new).await {
                        Ok(()) => tracing::info!(path = %path.display(), "configuration reloaded"),
                        Err(error) => tracing::error!(error = %format!("{error:#}"), "reload failed"),
                    },
                    Err(error) => tracing::error!(%error, "new configuration rejected; keeping the running one"),
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    agent.stop(!config.dataplane.keep_attached_on_exit).await
}
