//! Settings as every weft component reads them: each a flag with a `WEFT_*` variable, named
//! once in the component's `#[arg(env = ...)]`; the same settings from a map of variables
//! (tests, embedding) without a second table of names ([`parse_from_vars`]); durations written
//! the way operators write them (`500ms`, `30s`, `1h30m`).

use std::time::Duration;

use clap::builder::{BoolishValueParser, TypedValueParser};

/// Parses the settings `P` from its defaults and `vars`, each applied as the flag whose
/// `#[arg(env = ...)]` names it, exactly as if it were set in the environment: the names come
/// from clap's own argument list, so a variable renamed there is renamed here too, and one no
/// argument names is an error, never silently ignored. Switches (`bool` flags) take what the
/// environment takes (`1`, `true`, `yes`, `on` / `0`, `false`, `no`, `off`). Variables in the
/// process environment still apply to settings not given here, as clap reads them.
pub fn parse_from_vars<P, K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<P, String>
where
    P: clap::Parser,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let cmd = P::command();
    let mut argv = vec![cmd.get_name().to_string()];
    for (name, value) in vars {
        let (name, value) = (name.as_ref(), value.as_ref());
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|env| env == name))
            .ok_or_else(|| format!("unknown setting {name}"))?;
        let long = arg
            .get_long()
            .ok_or_else(|| format!("{name} names an argument without a long flag"))?;
        if arg.get_action().takes_values() {
            argv.push(format!("--{long}={value}"));
        } else if switch_value(value).map_err(|e| format!("{name}: {e}"))? {
            argv.push(format!("--{long}"));
        }
    }
    P::try_parse_from(argv).map_err(|e| e.to_string())
}

/// What an environment variable of a switch means: clap's boolish values.
fn switch_value(value: &str) -> Result<bool, String> {
    let cmd = clap::Command::new("weft");
    BoolishValueParser::new()
        .parse_ref(&cmd, None, std::ffi::OsStr::new(value))
        .map_err(|_| format!("`{value}` is not one of 1, true, yes, on, 0, false, no, off"))
}

/// Parses `500ms`, `30s`, `5m`, `24h`, `1h30m`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{s}` is missing a unit (ms, s, m, h, d)"))?;
        if digits == 0 {
            return Err(format!(
                "`{s}` is not a duration such as 500ms, 30s, 5m or 24h"
            ));
        }
        let value: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{s}` is not a duration such as 500ms, 30s, 5m or 24h"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            other => {
                return Err(format!(
                    "`{s}` has the unknown unit `{other}` (use ms, s, m, h or d)"
                ));
            }
        };
        rest = &rest[unit_len..];
        // Checked: a duration past `Duration::MAX` (about 584 billion years) is an error in
        // what the operator or a client wrote, not a panic in the process reading it.
        total = Duration::try_from_secs_f64(value * unit)
            .ok()
            .and_then(|d| total.checked_add(d))
            .ok_or_else(|| format!("`{s}` is too long a duration"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    #[command(name = "t")]
    struct Settings {
        #[arg(long, env = "WEFT_TEST_LISTEN", default_value = "127.0.0.1:1")]
        listen: String,
        #[arg(long, env = "WEFT_TEST_PORTS", value_delimiter = ',')]
        ports: Vec<u16>,
        #[arg(long, env = "WEFT_TEST_GRACE", default_value = "10s", value_parser = parse_duration)]
        grace: Duration,
        #[arg(long, env = "WEFT_TEST_DEV", value_parser = BoolishValueParser::new())]
        dev: bool,
    }

    #[test]
    fn settings_from_variables_named_by_the_arguments() {
        let none: [(&str, &str); 0] = [];
        let d: Settings = parse_from_vars(none).unwrap();
        assert_eq!(d.listen, "127.0.0.1:1");
        assert!(d.ports.is_empty() && !d.dev);
        assert_eq!(d.grace, Duration::from_secs(10));
        let s: Settings = parse_from_vars([
            ("WEFT_TEST_LISTEN", "[::1]:2"),
            ("WEFT_TEST_PORTS", "25,3306"),
            ("WEFT_TEST_GRACE", "500ms"),
            ("WEFT_TEST_DEV", "1"),
        ])
        .unwrap();
        assert_eq!(s.listen, "[::1]:2");
        assert_eq!(s.ports, [25, 3306]);
        assert_eq!(s.grace, Duration::from_millis(500));
        assert!(s.dev);
        for off in ["0", "false", "no", "off"] {
            let s: Settings = parse_from_vars([("WEFT_TEST_DEV", off)]).unwrap();
            assert!(!s.dev, "{off}");
        }
    }

    #[test]
    fn unknown_or_bad_variables_are_errors() {
        let e = parse_from_vars::<Settings, _, _>([("WEFT_TEST_NOPE", "1")]).unwrap_err();
        assert_eq!(e, "unknown setting WEFT_TEST_NOPE");
        let e = parse_from_vars::<Settings, _, _>([("WEFT_TEST_DEV", "maybe")]).unwrap_err();
        assert!(e.contains("WEFT_TEST_DEV") && e.contains("maybe"), "{e}");
        assert!(parse_from_vars::<Settings, _, _>([("WEFT_TEST_GRACE", "soon")]).is_err());
        assert!(parse_from_vars::<Settings, _, _>([("WEFT_TEST_PORTS", "smtp")]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "h", "10x", "ten seconds", "5 m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    /// Durations past `Duration::MAX` panicked (`Duration::from_secs_f64`, then `+=`): reached
    /// from a registration's `lease` and from resource files' timeouts.
    #[test]
    fn durations_too_long_are_errors_not_panics() {
        for long in [
            "99999999999999999999999s",
            &format!("{}s", "9".repeat(400)),
            "10000000000000000000s10000000000000000000s",
            "213503982334602d",
        ] {
            let e = parse_duration(long).unwrap_err();
            assert!(e.contains("too long"), "{long}: {e}");
        }
        assert_eq!(
            parse_duration("18446744073709551615").unwrap(),
            Duration::from_secs(u64::MAX)
        );
    }
}
