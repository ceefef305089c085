//! Every AWS call lbmanager makes, counted in [`Metrics`] by one SDK interceptor on every client,
//! as the leadership fence is checked ([`crate::fence::FenceCheck`]): one count per operation
//! sent, labelled with the service, AWS's own name of the operation (`DescribeLoadBalancers`,
//! `ChangeResourceRecordSets`) and its result ([`ErrorKind::as_str`], or `ok`).
//!
//! An interceptor, not a wrapper around each of the traits' methods: it sees every operation of
//! the SDK, those added later included, each page of a paged read on its own (each is a call
//! AWS's quotas count), and it adds no code per operation.

use std::sync::{Arc, Mutex};

use aws_sdk_route53::config::interceptors::{
    BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_sdk_route53::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_route53::error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_types::config_bag::{Storable, StoreReplace};

use super::ErrorKind;
use crate::metrics::Metrics;

/// The interceptor: part of every SDK client lbmanager builds when it has metrics.
#[derive(Debug, Clone)]
pub struct CountCalls {
    pub metrics: Arc<Metrics>,
    /// `elb`, `elbv2` or `route53`.
    pub service: &'static str,
}

/// One call in flight. It counts itself when the SDK drops it: after `read_after_execution` set
/// its result, or, when the operation's timeout cut the call short (no interceptor runs then),
/// as `transient`, which is what the caller sees of a timeout.
#[derive(Debug)]
struct InFlight {
    metrics: Arc<Metrics>,
    service: &'static str,
    operation: String,
    result: Mutex<Option<&'static str>>,
}

impl Storable for InFlight {
    type Storer = StoreReplace<Self>;
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let result = self
            .result
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(ErrorKind::Transient.as_str());
        self.metrics.aws_call(self.service, &self.operation, result);
    }
}

impl Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "lbmanager call counter"
    }

    // Not `read_before_execution`: a client's interceptors see that before the operation's own
    // configuration (its name among it) is in the bag.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg
            .load::<Metadata>()
            .map_or("unknown", |m| m.name())
            .to_string();
        cfg.interceptor_state().store_put(InFlight {
            metrics: self.metrics.clone(),
            service: self.service,
            operation,
            result: Mutex::new(None),
        });
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let result = match context.output_or_error() {
            None | Some(Ok(_)) => "ok",
            Some(Err(err)) if err.is_operation_error() => {
                let response = context.response();
                let status = response.map_or(0, |r| r.status().as_u16());
                let code = response
                    .and_then(|r| r.body().bytes())
                    .and_then(error_code)
                    .unwrap_or_default();
                ErrorKind::of(code, status).as_str()
            }
            // Timeouts, connections, the fence: what `classify` calls transient.
            Some(Err(_)) => ErrorKind::Transient.as_str(),
        };
        if let Some(call) = cfg.load::<InFlight>() {
            *call.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        }
        Ok(())
    }
}

/// The error code of an AWS error answer (`<Code>Throttling</Code>`: the XML both Elastic Load
/// Balancing and Route53 answer errors with); `None` for a body without one (moto's HTML 500).
fn error_code(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(text[start..start + len].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_of_an_aws_error_answer() {
        let elb =
            br#"<ErrorResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2012-06-01/">
          <Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>
          <RequestId>1</RequestId></ErrorResponse>"#;
        assert_eq!(error_code(elb), Some("Throttling"));
        let route53 = b"<ErrorResponse><Error><Type>Sender</Type><Code>NoSuchHostedZone</Code>\
            </Error></ErrorResponse>";
        assert_eq!(error_code(route53), Some("NoSuchHostedZone"));
        assert_eq!(error_code(b"<html>Internal Server Error</html>"), None);
        assert_eq!(
            ErrorKind::of("Throttling", 400).as_str(),
            "throttled",
            "the label the dashboards use"
        );
        assert_eq!(ErrorKind::of("", 500), ErrorKind::Transient);
    }
}
