//! Where the agent looks when the command line does not say: the configuration file.
//!
//! `up`, `check-config` and (through the running agent) `reload` read [`DEFAULT_CONFIG`] when
//! no `--config` is given. [`CONFIG_ENV`] moves that default (tests point it at a scratch file
//! so they never depend on the machine's `/etc`; an operator may use it too).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

/// The configuration file read when none is given.
pub const DEFAULT_CONFIG: &str = "/etc/sshlb/sshlb.toml";

/// Environment variable that replaces [`DEFAULT_CONFIG`] as the default path.
pub const CONFIG_ENV: &str = "SSHLB_CONFIG";

/// Which configuration file a command uses, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigChoice {
    /// Named on the command line: it must exist.
    Given(PathBuf),
    /// Not named; the default path exists.
    Default(PathBuf),
    /// Not named and the default path does not exist (yet): `up` runs with no services and
    /// still re-reads this path on `reload`; `check-config` fails naming it.
    Missing(PathBuf),
}

impl ConfigChoice {
    /// The path chosen, whether or not it exists.
    pub fn path(&self) -> &Path {
        match self {
            Self::Given(p) | Self::Default(p) | Self::Missing(p) => p,
        }
    }
}

/// The default path: [`CONFIG_ENV`] when set and not empty, [`DEFAULT_CONFIG`] otherwise.
pub fn default_config_path() -> PathBuf {
    default_path_from(std::env::var_os(CONFIG_ENV))
}

fn default_path_from(env: Option<OsString>) -> PathBuf {
    env.filter(|v| !v.is_empty()).map_or_else(|| PathBuf::from(DEFAULT_CONFIG), PathBuf::from)
}

/// The configuration to use for `given` (the `--config` argument, if any).
pub fn choose_config(given: Option<PathBuf>) -> ConfigChoice {
    choose(given, default_config_path(), std::path::Path::exists)
}

fn choose(
    given: Option<PathBuf>,
    default: PathBuf,
    exists: impl Fn(&Path) -> bool,
) -> ConfigChoice {
    match given {
        Some(path) => ConfigChoice::Given(path),
        None if exists(&default) => ConfigChoice::Default(default),
        None => ConfigChoice::Missing(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_moves_the_default_and_an_empty_value_does_not() {
        assert_eq!(default_path_from(None), PathBuf::from(DEFAULT_CONFIG));
        assert_eq!(default_path_from(Some("".into())), PathBuf::from(DEFAULT_CONFIG));
        assert_eq!(default_path_from(Some("/tmp/x.toml".into())), PathBuf::from("/tmp/x.toml"));
    }

    #[test]
    fn a_given_file_wins_then_the_default_if_it_exists() {
        let default = PathBuf::from("/etc/sshlb/sshlb.toml");
        let given = Some(PathBuf::from("/srv/lb.toml"));
        assert_eq!(
            choose(given, default.clone(), |_| false),
            ConfigChoice::Given("/srv/lb.toml".into())
        );
        assert_eq!(choose(None, default.clone(), |_| true), ConfigChoice::Default(default.clone()));
        let missing = choose(None, default.clone(), |_| false);
        assert_eq!(missing, ConfigChoice::Missing(default.clone()));
        assert_eq!(missing.path(), default.as_path());
    }
}
