use clap::Parser;

fn main() {
    // A bug must still read as one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error ({info}); please report it");
    }));
    let cli = cairn::cli::Cli::parse();
    if let Err(e) = cairn::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
