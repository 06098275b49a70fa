//! The SA database: inbound SAs found by SPI alone (M1), outbound SAs by id.
pub mod spi_table;
