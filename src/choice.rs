//! Named choices: enums whose spellings are written once, in their [`clap::ValueEnum`] derive
//! (names, aliases, and help text from the variants' doc comments), and shared by the command
//! line, `Display` and `FromStr` ([`value_enum_text!`]). Serde names are kept equal to them
//! (tests/it/registry.rs checks every such enum).

use clap::builder::{PossibleValue, TypedValueParser};
use clap::ValueEnum;
use std::marker::PhantomData;

/// The names of `E`'s choices, in declaration order (aliases left out).
pub fn names<E: ValueEnum>() -> Vec<String> {
    E::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value())
        .map(|p| p.get_name().to_string())
        .collect()
}

/// The choice of `E` spelled `s` (a name or an alias, any case), else
/// `unknown <what> '<s>': expected one of <names>`.
pub fn parse<E: ValueEnum>(s: &str, what: &str) -> Result<E, String> {
    <E as ValueEnum>::from_str(s, true).map_err(|_| {
        format!(
            "unknown {what} '{s}': expected one of {}",
            names::<E>().join(", ")
        )
    })
}

/// `Display` (the choice's name) and `FromStr` ([`parse`], naming `$what` in errors) of
/// [`clap::ValueEnum`] types.
macro_rules! value_enum_text {
    ($($t:ty => $what:expr),* $(,)?) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let v = clap::ValueEnum::to_possible_value(self).expect("no skipped choice");
                f.write_str(v.get_name())
            }
        }

        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $crate::choice::parse(s, $what)
            }
        }
    )*};
}
pub(crate) use value_enum_text;

/// The command-line parser of a choice: its `FromStr` (so the error says `unknown <what> ...`,
/// as the flags always did), and its names with their help in `--help`.
pub struct Choice<E>(PhantomData<fn() -> E>);

impl<E> Clone for Choice<E> {
    fn clone(&self) -> Self {
        Choice(PhantomData)
    }
}

/// [`Choice`] of `E`, for `#[arg(value_parser = choice::<E>())]`.
pub fn choice<E>() -> Choice<E> {
    Choice(PhantomData)
}

impl<E> TypedValueParser for Choice<E>
where
    E: ValueEnum + std::str::FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    type Value = E;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<E, clap::Error> {
        (|s: &str| s.parse::<E>()).parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            E::value_variants()
                .iter()
                .filter_map(ValueEnum::to_possible_value),
        ))
    }
}
