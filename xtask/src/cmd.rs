//! Running external programs: showing the command line, inheriting or capturing output, and
//! turning a failure into an error that names the command line and carries its stderr.

use std::{
    ffi::OsStr,
    process::{Command, Output, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// The command line of `cmd` as a shell would read it: env overrides, program, quoted arguments,
/// and the directory it runs in when one was set.
pub fn display(cmd: &Command) -> String {
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter_map(|(key, value)| value.map(|v| format!("{}={}", key.to_string_lossy(), quote(v))))
        .collect();
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    let mut line = words.join(" ");
    if let Some(dir) = cmd.get_current_dir() {
        line.push_str(&format!("  (in {})", dir.display()));
    }
    line
}

/// `word` quoted for a POSIX shell when it needs quoting.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@+,%[]".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Shows `cmd` as `$ <command line>` and runs it with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    let status = cmd.status().with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` silently and returns its stdout; on failure the error carries the command line and
/// its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let out = captured(cmd).with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

/// Runs `cmd` silently; its stdout if it started and exited 0, `None` otherwise (for probes such
/// as "is this tool installed and working?").
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = captured(cmd).ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn captured(cmd: &mut Command) -> std::io::Result<Output> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).output()
}

/// Runs `cmd` silently and returns its stdout as bytes; on failure the error carries the
/// command line and its stderr.
pub fn output_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let line = display(cmd);
    let out = captured(cmd).with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it_and_shows_env_and_dir() {
        let mut cmd = Command::new("cargo");
        cmd.args(["install", "bpf-linker@0.13.0", "--features", "llvm-22"])
            .arg("it's here")
            .arg("")
            .env("RUSTFLAGS", "-L native=/tmp/x")
            .env_remove("RUSTC")
            .current_dir("/work");
        assert_eq!(
            display(&cmd),
            "RUSTFLAGS='-L native=/tmp/x' cargo install bpf-linker@0.13.0 --features llvm-22 \
             'it'\\''s here' ''  (in /work)"
        );
    }

    #[test]
    fn output_fails_with_the_command_line_and_stderr() {
        let err = output(Command::new("sh").args(["-c", "echo oops >&2; exit 3"]))
            .expect_err("exit 3 is a failure");
        let msg = format!("{err:#}");
        assert!(msg.contains("sh -c 'echo oops >&2; exit 3'"), "{msg}");
        assert!(msg.contains("oops"), "{msg}");
        assert_eq!(output(Command::new("sh").args(["-c", "echo hi"])).expect("exit 0"), "hi\n");
    }

    #[test]
    fn probe_is_none_for_missing_programs_and_failures() {
        assert_eq!(probe(&mut Command::new("/nonexistent/sshlb-xtask-probe")), None);
        assert_eq!(probe(&mut Command::new("false")), None);
        assert_eq!(probe(&mut Command::new("echo")).as_deref(), Some("\n"));
    }
}
