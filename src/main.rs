//! The `malai` binary: parse the command line, set up logging, run, and map
//! the outcome to an exit code in one place.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = malai::cli::Cli::parse();
    malai::cli::init_logging(&cli);
    let code = match malai::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            let code = malai::exit::code_of(&err);
            eprintln!("malai: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("{cause}");
            }
            code
        }
    };
    std::process::ExitCode::from(code)
}
