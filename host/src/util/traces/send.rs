//! The two OTLP transports for an encoded batch ([`super::otlp`]): gRPC (a unary
//! `TraceService/Export` call over tonic's HTTP/2 channel) and HTTP (`POST` of
//! `application/x-protobuf` with reqwest), each with `OTEL_EXPORTER_OTLP_HEADERS` and the
//! export timeout. The collector's answer is read for its status only.

use std::time::Duration;

use anyhow::Context;
use bytes::{Buf, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::config::{Protocol, TraceConfig};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Where batches go.
pub enum Sender {
    Grpc { grpc: tonic::client::Grpc<tonic::transport::Channel>, metadata: tonic::metadata::MetadataMap },
    Http { client: reqwest::Client, url: String, headers: http::HeaderMap },
}

impl Sender {
    /// The transport `config` names; connects lazily (a collector that is not up yet is an
    /// export that fails, not a start that fails). gRPC needs a tokio runtime to be current.
    pub fn new(config: &TraceConfig) -> anyhow::Result<Self> {
        match config.protocol {
            Protocol::Grpc => {
                let channel = tonic::transport::Channel::from_shared(config.endpoint.clone())
                    .with_context(|| format!("`{}` is not a gRPC endpoint", config.endpoint))?
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout)
                    .connect_lazy();
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (name, value) in &config.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                        .with_context(|| format!("the OTLP header `{name}` is not a gRPC metadata key"))?;
                    let value = value
                        .parse()
                        .with_context(|| format!("the OTLP header `{name}` has a value gRPC cannot carry"))?;
                    metadata.insert(key, value);
                }
                Ok(Self::Grpc { grpc: tonic::client::Grpc::new(channel), metadata })
            }
            Protocol::HttpProtobuf => {
                let client = reqwest::Client::builder()
                    .timeout(config.timeout)
                    .build()
                    .context("cannot build the OTLP HTTP client")?;
                let mut headers = http::HeaderMap::new();
                for (name, value) in &config.headers {
                    let name = http::HeaderName::from_bytes(name.as_bytes())
                        .with_context(|| format!("the OTLP header `{name}` is not an HTTP header name"))?;
                    let value = http::HeaderValue::from_str(value)
                        .with_context(|| format!("the OTLP header `{name}` has a value HTTP cannot carry"))?;
                    headers.insert(name, value);
                }
                headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/x-protobuf"),
                );
                Ok(Self::Http { client, url: config.endpoint.clone(), headers })
            }
        }
    }

    /// Sends one encoded `ExportTraceServiceRequest`; the error says what the collector did.
    pub async fn send(&mut self, body: Bytes, timeout: Duration) -> Result<(), String> {
        match self {
            Self::Grpc { grpc, metadata } => {
                grpc.ready().await.map_err(|error| format!("the gRPC channel is not ready: {error}"))?;
                let mut request = tonic::Request::new(body);
                *request.metadata_mut() = metadata.clone();
                request.set_timeout(timeout);
                let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
                match grpc.unary::<Bytes, (), _>(request, path, RawCodec).await {
                    Ok(_) => Ok(()),
                    Err(status) => Err(format!("gRPC status `{:?}`: {}", status.code(), status.message())),
                }
            }
            Self::Http { client, url, headers } => {
                let response = client
                    .post(url.as_str())
                    .headers(headers.clone())
                    .timeout(timeout)
                    .body(body)
                    .send()
                    .await
                    .map_err(|error| format!("{error}"))?;
                let status = response.status();
                // Read to the end, so the connection can be kept.
                let _ = response.bytes().await;
                if status.is_success() { Ok(()) } else { Err(format!("HTTP status {status}")) }
            }
        }
    }
}

/// Passes an encoded request through as the gRPC message; reads the answer only to its end.
#[derive(Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}
