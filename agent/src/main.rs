//! The `tern` binary: parses the command line, loads the config, wires the
//! library's parts together and maps errors to an exit code and one line on
//! stderr. All logic lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;

/// Exit code for configuration errors (sysexits EX_CONFIG), so that systemd's
/// `RestartPreventExitStatus=78` does not restart a broken config in a loop.
const EXIT_CONFIG: u8 = 78;

/// tern: store-and-forward telemetry agent for small Linux devices.
#[derive(FromArgs, Debug)]
struct Cli {
    /// print the version and exit
    #[argh(switch)]
    version: bool,
    #[argh(subcommand)]
    command: Option<Command>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Run(RunArgs),
    Check(CheckArgs),
    Queue(QueueArgs),
    Convert(ConvertArgs),
}

/// print the tern TOML for a Prometheus configuration's scrape_configs, with a line for each setting it cannot carry over
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "convert")]
struct ConvertArgs {
    /// the Prometheus configuration file (prometheus.yml)
    #[argh(positional)]
    file: PathBuf,
}

/// run the agent
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
struct RunArgs {
    /// the configuration file (default /etc/tern/tern.toml)
    #[argh(option, default = "PathBuf::from(tern::config::DEFAULT_PATH)")]
    config: PathBuf,
}

/// validate a configuration file; print errors with line:column and exit non-zero
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "check")]
struct CheckArgs {
    /// the configuration file (default /etc/tern/tern.toml)
    #[argh(option, default = "PathBuf::from(tern::config::DEFAULT_PATH)")]
    config: PathBuf,
}

/// show the disk queue (batches, bytes, oldest age) of a stopped or running agent
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "queue")]
struct QueueArgs {
    /// the configuration file (default /etc/tern/tern.toml)
    #[argh(option, default = "PathBuf::from(tern::config::DEFAULT_PATH)")]
    config: PathBuf,
}

fn main() -> ExitCode {
    // smol::unblock's pool (the receiver's decoding and queue pushes, the
    // queue statistics of /metrics) would otherwise grow to 500 threads
    // under a flood of requests; two keep tern's thread count fixed. Set
    // before any other thread exists, so nothing reads the environment at once.
    if std::env::var_os("BLOCKING_MAX_THREADS").is_none() {
        std::env::set_var("BLOCKING_MAX_THREADS", "2");
    }
    let cli: Cli = argh::from_env();
    if cli.version {
        println!("tern {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        eprintln!("tern: a command is needed: run, check, queue or convert (see tern --help)");
        return ExitCode::from(2);
    };
    let config_path = match &command {
        Command::Run(a) => &a.config,
        Command::Check(a) => &a.config,
        Command::Queue(a) => &a.config,
        Command::Convert(a) => return convert(&a.file),
    };
    let config = match tern::Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tern: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match command {
        Command::Run(_) => tern::run(config),
        Command::Check(_) => {
            println!("{}: ok: {}", config.path.display(), tern::summary(&config));
            Ok(())
        }
        Command::Queue(_) => tern::print_queue(&config, &mut std::io::stdout()),
        Command::Convert(_) => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed stdout (`tern queue | head`) is no failure, wherever in
        // the chain of causes it shows, as ripgrep treats a broken pipe.
        Err(e) if is_broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tern convert FILE`: the TOML on stdout; an unreadable file or YAML
/// tern cannot read is a configuration error (78), with its line and column.
fn convert(file: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tern: {}: {e}", file.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match tern::config::convert(file, &text) {
        Ok(toml) => {
            print!("{toml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Whether `e`, or any error in its chain of `source()`s, is a broken pipe.
fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        next = e.source();
    }
    false
}
