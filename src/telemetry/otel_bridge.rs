//! A `metrics` recorder that feeds OpenTelemetry instruments, so everything recorded through the
//! facade is also exported by OTLP.
//!
//! Counters and gauges are plain atomics (one per label set) read by *observable* instruments at
//! collection time: the hot path pays one atomic operation, and a gauge is always exact (no
//! record-order races). Histograms use the SDK histogram with the buckets of [`names::METRICS`],
//! so both export paths bucket alike. Instruments are created once per name; handles are cached
//! per label set, so registering the same key twice shares its state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, SharedString, Unit};
use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;

use super::names;

type Series = Arc<Mutex<Vec<(Vec<KeyValue>, Arc<AtomicU64>)>>>;

#[derive(Default)]
struct State {
    /// Every label set registered, per kind and key.
    counters: HashMap<Key, Arc<AtomicU64>>,
    gauges: HashMap<Key, Arc<AtomicU64>>,
    histograms: HashMap<Key, Arc<OtelHistogram>>,
    /// The label sets of each instrument name, shared with its callback.
    counter_series: HashMap<String, Series>,
    gauge_series: HashMap<String, Series>,
    histogram_instruments: HashMap<String, opentelemetry::metrics::Histogram<f64>>,
    descriptions: HashMap<String, (Option<Unit>, String)>,
}

/// The bridge; register handles once and keep them (registration takes a lock).
pub struct OtelBridge {
    meter: Meter,
    state: Mutex<State>,
}

struct OtelHistogram {
    histogram: opentelemetry::metrics::Histogram<f64>,
    attributes: Vec<KeyValue>,
}

impl HistogramFn for OtelHistogram {
    fn record(&self, value: f64) {
        self.histogram.record(value, &self.attributes);
    }
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels()
        .map(|l| KeyValue::new(l.key().to_owned(), l.value().to_owned()))
        .collect()
}

fn otel_unit(name: &str, described: Option<Unit>) -> String {
    if let Some(def) = names::metric(name) {
        return def.otel_unit.to_owned();
    }
    match described {
        Some(Unit::Seconds) => "s".into(),
        Some(Unit::Bytes) => "By".into(),
        _ => String::new(),
    }
}

impl OtelBridge {
    pub fn new(meter: Meter) -> Self {
        Self {
            meter,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn description(state: &State, name: &str) -> (String, String) {
        let (unit, text) = state.descriptions.get(name).cloned().unwrap_or_default();
        (otel_unit(name, unit), text)
    }
}

impl metrics::Recorder for OtelBridge {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.lock()
            .descriptions
            .insert(key.as_str().to_owned(), (unit, description.into_owned()));
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe_counter(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe_counter(key, unit, description);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut state = self.lock();
        if let Some(value) = state.counters.get(key) {
            return Counter::from_arc(value.clone());
        }
        let value = Arc::new(AtomicU64::new(0));
        let name = key.name().to_owned();
        if !state.counter_series.contains_key(&name) {
            let series: Series = Arc::default();
            let (unit, description) = Self::description(&state, &name);
            let read = series.clone();
            self.meter
                .u64_observable_counter(name.clone())
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |observer| {
                    for (attrs, v) in read.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                        observer.observe(v.load(Relaxed), attrs);
                    }
                })
                .build();
            state.counter_series.insert(name.clone(), series);
        }
        state.counter_series[&name]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((attributes(key), value.clone()));
        state.counters.insert(key.clone(), value.clone());
        Counter::from_arc(value)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut state = self.lock();
        if let Some(value) = state.gauges.get(key) {
            return Gauge::from_arc(value.clone());
        }
        // `metrics` stores gauge values as f64 bits in an AtomicU64.
        let value = Arc::new(AtomicU64::new(0f64.to_bits()));
        let name = key.name().to_owned();
        if !state.gauge_series.contains_key(&name) {
            let series: Series = Arc::default();
            let (unit, description) = Self::description(&state, &name);
            let read = series.clone();
            self.meter
                .f64_observable_gauge(name.clone())
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |observer| {
                    for (attrs, v) in read.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                        observer.observe(f64::from_bits(v.load(Relaxed)), attrs);
                    }
                })
                .build();
            state.gauge_series.insert(name.clone(), series);
        }
        state.gauge_series[&name]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((attributes(key), value.clone()));
        state.gauges.insert(key.clone(), value.clone());
        Gauge::from_arc(value)
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut state = self.lock();
        if let Some(h) = state.histograms.get(key) {
            return Histogram::from_arc(h.clone());
        }
        let name = key.name().to_owned();
        if !state.histogram_instruments.contains_key(&name) {
            let (unit, description) = Self::description(&state, &name);
            let mut builder = self
                .meter
                .f64_histogram(name.clone())
                .with_unit(unit)
                .with_description(description);
            if let Some(def) = names::metric(&name) {
                builder = builder.with_boundaries(def.buckets.to_vec());
            }
            state
                .histogram_instruments
                .insert(name.clone(), builder.build());
        }
        let handle = Arc::new(OtelHistogram {
            histogram: state.histogram_instruments[&name].clone(),
            attributes: attributes(key),
        });
        state.histograms.insert(key.clone(), handle.clone());
        Histogram::from_arc(handle)
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    use crate::reasons::CloseReason;
    use crate::telemetry::metrics;
    use crate::telemetry::names;

    #[test]
    fn facade_recordings_reach_otel_with_units_buckets_and_exact_values() {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let handle = metrics::build(Some(&provider));
        let m = &handle.metrics;
        m.connections_opened.increment(3);
        m.active_connections.increment(3.0);
        m.active_connections.decrement(1.0);
        let reason = CloseReason::ClientClosed.index();
        m.connection_duration[reason].record(2.0);
        m.connection_duration[reason].record(7200.0);
        provider.force_flush().unwrap();

        let exported = exporter.get_finished_metrics().unwrap();
        let all: Vec<_> = exported
            .iter()
            .flat_map(|rm| rm.scope_metrics())
            .flat_map(|sm| sm.metrics())
            .collect();
        let find = |name: &str| *all.iter().find(|m| m.name() == name).unwrap();

        let opened = find(names::CONNECTIONS_OPENED);
        assert_eq!(opened.unit(), "{connection}");
        let AggregatedMetrics::U64(MetricData::Sum(sum)) = opened.data() else {
            panic!("{:?}", opened.data())
        };
        assert!(sum.is_monotonic());
        assert_eq!(sum.data_points().map(|p| p.value()).sum::<u64>(), 3);

        let active = find(names::ACTIVE_CONNECTIONS);
        let AggregatedMetrics::F64(MetricData::Gauge(g)) = active.data() else {
            panic!("{:?}", active.data())
        };
        assert_eq!(
            g.data_points().map(|p| p.value()).collect::<Vec<_>>(),
            [2.0]
        );

        let duration = find(names::CONNECTION_DURATION);
        assert_eq!(duration.unit(), "s");
        let AggregatedMetrics::F64(MetricData::Histogram(h)) = duration.data() else {
            panic!("{:?}", duration.data())
        };
        let point = h
            .data_points()
            .find(|p| {
                p.attributes()
                    .any(|kv| kv.value.as_str() == "client_closed")
            })
            .unwrap();
        assert_eq!(point.bounds().collect::<Vec<_>>(), names::DURATION_BUCKETS);
        assert_eq!(point.count(), 2);
        assert_eq!(point.sum(), 7202.0);
    }
}
