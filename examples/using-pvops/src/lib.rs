#![doc = include_str!("../../../docs/using-pvops.md")]
#![no_std]
