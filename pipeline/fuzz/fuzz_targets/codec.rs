#![no_main]
//! The shared-memory record codec: any bytes, decoded as every record type; whatever decodes
//! must encode back to exactly the input (the encoding is canonical).
use libfuzzer_sys::fuzz_target;
use proto::codec::{to_vec, Record};
use proto::{Ack, Datagram, Event, UpdateEnvelope};

fn check<T: Record>(data: &[u8]) {
    if let Ok(x) = T::decode(data) {
        assert_eq!(&*to_vec(&x).unwrap(), data);
    }
}

fuzz_target!(|data: &[u8]| {
    check::<UpdateEnvelope>(data);
    check::<Ack>(data);
    check::<Event>(data);
    check::<Datagram>(data);
});
