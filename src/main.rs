use std::process::ExitCode;

fn main() -> ExitCode {
    followup::cli::main()
}
