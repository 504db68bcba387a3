//! `jobpipe`: submit jobs to a jobpipe producer and check on it, from a terminal or a script.
//!
//! A script branches on the exit status, so what went wrong maps to it in one place, here:
//! [`Failure`] (0 success, 1 refused, 64 usage, 75 retry later; README "Exit statuses"). Every
//! error prints one line to standard error naming what failed, never a payload or a token.

/// `println!` that returns the error instead of panicking when standard output is gone (a
/// closed pipe: `jobpipe submit --count 1000 | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod demo;
mod dlq;
mod health;
mod permissions;
mod queues;
mod submit;
mod target;

use clap::{
    Parser, Subcommand,
    error::{ContextKind, ContextValue, ErrorKind},
};
use std::{fmt, process::ExitCode, time::Duration};
use tonic::{Code, Status};

/// A command-line client for a jobpipe producer.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    target: target::Target,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit one job, or `--count` copies of it in batches; prints each job id.
    Submit(Box<submit::SubmitArgs>),
    /// Ask the producer whether it is serving (it is while its broker link is up).
    Health,
    /// Submit a small mixed workload and follow it live through the consumers' metrics.
    Demo(demo::DemoArgs),
    /// Dead letters: list, show, replay, purge.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Every queue's ready backlog, dead letters and consumers, and the delay ladder.
    Queues(queues::QueuesArgs),
    /// `queues`, refreshed in place, with the rates between refreshes.
    Watch(queues::WatchArgs),
    /// Print the `rabbitmqctl set_permissions` commands giving each broker user of an
    /// installation exactly what it needs.
    BrokerPermissions(permissions::PermissionsArgs),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage(&error),
    };
    let outcome = match cli.command {
        Command::Submit(args) => submit::run(&cli.target, *args).await,
        Command::Health => health::run(&cli.target).await,
        Command::Demo(args) => match demo::run(&cli.target, args).await {
            // The demo reports its own give-up (1) on standard output.
            Ok(code) => return code,
            Err(error) => Err(Error::from_demo(&error)),
        },
        // Its calls read a whole dead-letter queue: about 10 s per 100,000 entries.
        Command::Dlq(command) => {
            let target = cli.target.waiting_by_default(Duration::from_secs(120));
            dlq::run(&target, command).await
        }
        Command::Queues(args) => queues::queues(&cli.target, args).await,
        Command::Watch(args) => queues::watch(&cli.target, args).await,
        Command::BrokerPermissions(args) => permissions::run(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report(),
    }
}

/// What kind of failure ended a command, which decides its exit status. Ordered from the least
/// to the most final, so that a batch reports the worst of its refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Failure {
    /// Worth trying again later (75, `EX_TEMPFAIL`): the producer could not be reached or did
    /// not answer within `--timeout`, or answered that it or its broker is unavailable, slow or
    /// busy. For a submission the outcome may be open: retry with the same `--job-id`.
    Retryable,
    /// Refused for good (1): the same call would be refused again, and nothing was queued; or
    /// any other failure retrying will not fix (standard output closed).
    Refused,
    /// The command line is wrong (64, `EX_USAGE`): bad arguments, an unreadable file. Nothing
    /// was sent.
    Usage,
}

impl Failure {
    /// The exit status.
    fn status(self) -> u8 {
        match self {
            Self::Refused => 1,
            Self::Usage => 64,
            Self::Retryable => 75,
        }
    }

    fn exit_code(self) -> ExitCode {
        ExitCode::from(self.status())
    }

    /// What a gRPC status code means for the caller, per the contract of
    /// `proto/jobpipe/v1/jobs.proto`; `None` for OK. Only the codes that contract lists as
    /// "nothing was queued" and the caller must change something are refusals. A code that
    /// leaves the outcome open (`UNKNOWN`, `CANCELLED`, `ABORTED`) is retryable: a job may be
    /// queued, and giving up on it would be wrong.
    fn of(code: Code) -> Option<Self> {
        match code {
            Code::Ok => None,
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted => Some(Self::Retryable),
            Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::OutOfRange
            | Code::AlreadyExists
            | Code::Unimplemented
            | Code::Internal
            | Code::DataLoss => Some(Self::Refused),
        }
    }
}

/// A failed command: its [`Failure`] and the one line that names what failed.
#[derive(Debug)]
pub(crate) struct Error {
    failure: Failure,
    message: String,
}

impl Error {
    /// An error of kind `failure`; control characters in `message` become spaces, so that it
    /// prints as one line whatever a server put into it.
    pub(crate) fn new(failure: Failure, message: impl Into<String>) -> Self {
        let message: String = message.into();
        Self {
            failure,
            message: message.replace(char::is_control, " "),
        }
    }

    /// A usage error (64).
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Failure::Usage, message)
    }

    /// A call (`what`) the producer answered with a failed `status`.
    pub(crate) fn status(what: &str, status: &Status) -> Self {
        let failure = Failure::of(status.code()).unwrap_or(Failure::Refused);
        Self::new(failure, format!("{what}: {}", describe(status)))
    }

    /// This error with `note` appended, in parentheses.
    pub(crate) fn note(self, note: &str) -> Self {
        Self::new(self.failure, format!("{} ({note})", self.message))
    }

    /// The demo's error: its kind, from the first cause that says (a call's status, an error of
    /// ours), else refused.
    fn from_demo(error: &anyhow::Error) -> Self {
        for cause in error.chain() {
            if let Some(ours) = cause.downcast_ref::<Self>() {
                return Self::new(ours.failure, format!("demo: {ours}"));
            }
            if let Some(status) = cause.downcast_ref::<Status>() {
                return Self::status("demo: a call to the producer", status);
            }
        }
        Self::new(Failure::Refused, format!("demo: {error:#}"))
    }

    /// Prints the line and gives the exit status.
    fn report(&self) -> ExitCode {
        eprintln!("jobpipe: {}", self.message);
        self.failure.exit_code()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// What `out!` returns when standard output is gone; nothing else in the CLI writes with `?`.
impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Self::new(
            Failure::Refused,
            format!("cannot write to standard output: {error}"),
        )
    }
}

/// `CODE: message`, the code as the gRPC specification spells it (`INVALID_ARGUMENT`).
pub(crate) fn describe(status: &Status) -> String {
    let name = jobpipe_proto::status::code_name(status.code());
    match status.message() {
        "" => name.to_owned(),
        message => format!("{name}: {message}"),
    }
}

/// A command line clap refused: one line and 64 (clap's own status is 2, which scripts cannot
/// tell from a failure of ours). Help and version print as clap prints them, and exit 0; so does
/// the help shown for a missing command, but with 64.
fn usage(error: &clap::Error) -> ExitCode {
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            return Failure::Usage.exit_code();
        }
        _ => {}
    }
    // clap's rendering: "error: ...", tips, then the usage and a pointer to `--help`; keep the
    // error and the tips.
    let rendered = error.render().to_string();
    let mut parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:"))
        .filter(|line| !line.is_empty() && !line.starts_with("For more information"))
        .collect();
    if let Some(first) = parts.first_mut() {
        *first = first.strip_prefix("error: ").unwrap_or(first);
    }
    let timeout_misplaced = error.kind() == ErrorKind::UnknownArgument
        && matches!(
            error.get(ContextKind::InvalidArg),
            Some(ContextValue::String(arg)) if arg.starts_with("--timeout")
        );
    if timeout_misplaced {
        parts
            .push("the producer's --timeout goes before the command: jobpipe --timeout 30s health");
    }
    // A list clap puts under "...:" stays with its heading.
    let line = parts
        .iter()
        .fold(String::new(), |line, part| match line.as_str() {
            "" => (*part).to_owned(),
            _ if line.ends_with(':') => format!("{line} {part}"),
            _ => format!("{line}; {part}"),
        });
    Error::usage(format!("{line}; try '--help'")).report()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_the_documented_exit_statuses() {
        let cases = [
            (Code::Ok, None),
            (Code::Unavailable, Some(75)),
            (Code::DeadlineExceeded, Some(75)),
            (Code::ResourceExhausted, Some(75)),
            (Code::Unknown, Some(75)),
            (Code::Cancelled, Some(75)),
            (Code::Aborted, Some(75)),
            (Code::InvalidArgument, Some(1)),
            (Code::PermissionDenied, Some(1)),
            (Code::Unauthenticated, Some(1)),
            (Code::FailedPrecondition, Some(1)),
            (Code::NotFound, Some(1)),
            (Code::OutOfRange, Some(1)),
            (Code::AlreadyExists, Some(1)),
            (Code::Unimplemented, Some(1)),
            (Code::Internal, Some(1)),
            (Code::DataLoss, Some(1)),
        ];
        for (code, status) in cases {
            assert_eq!(Failure::of(code).map(Failure::status), status, "{code:?}");
        }
        assert_eq!(Failure::Usage.status(), 64);
    }

    #[test]
    fn a_batch_reports_its_most_final_refusal() {
        let worst = [None, Some(Failure::Retryable), Some(Failure::Refused), None]
            .into_iter()
            .max();
        assert_eq!(worst, Some(Some(Failure::Refused)));
    }

    #[test]
    fn an_error_prints_as_one_line_whatever_the_server_said() {
        let status = Status::invalid_argument("job.type: bad\nsecond line\r");
        let error = Error::status("SubmitJob at http://h:1", &status);
        assert_eq!(
            error.to_string(),
            "SubmitJob at http://h:1: INVALID_ARGUMENT: job.type: bad second line "
        );
        assert_eq!(error.failure.status(), 1);
    }
}
