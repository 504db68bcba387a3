//! Helpers for Prometheus metrics shared by both services: label enums spelled in snake_case, and
//! the buckets latency histograms use.

/// Defines a closed enum usable as a Prometheus label value, spelled by the given strings.
///
/// ```
/// jobpipe_runtime::label_enum! {
///     /// How a publish ended.
///     pub enum Outcome { Confirmed => "confirmed", Nacked => "nacked" }
/// }
/// assert_eq!(Outcome::Nacked.as_str(), "nacked");
/// ```
#[macro_export]
macro_rules! label_enum {
    ($(#[$doc:meta])* $vis:vis enum $name:ident { $($(#[$vdoc:meta])* $variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $($(#[$vdoc])* #[doc = concat!("`", $label, "`")] $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $label),+
                }
            }
        }

        impl ::prometheus_client::encoding::EncodeLabelValue for $name {
            fn encode(
                &self,
                encoder: &mut ::prometheus_client::encoding::LabelValueEncoder<'_>,
            ) -> ::std::fmt::Result {
                ::std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

/// Buckets for latencies from half a millisecond to about a minute.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 18)
}

/// Registers `jobpipe_build_info{service, version}`, always 1, so dashboards can tell which
/// version runs where.
pub fn register_build_info(
    registry: &mut prometheus_client::registry::Registry,
    service: &'static str,
) {
    use prometheus_client::metrics::{family::Family, gauge::Gauge};
    let info = Family::<[(&'static str, &'static str); 2], Gauge>::default();
    info.get_or_create(&[("service", service), ("version", env!("CARGO_PKG_VERSION"))])
        .set(1);
    registry.register(
        "jobpipe_build_info",
        "The running jobpipe build: always 1, labelled with the service and version",
        info,
    );
}
