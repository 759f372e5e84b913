"""HL7 v2 from the MIS over MLLP: patients (ADT), orders (ORM/OMI) and results (ORU) become
events before the acknowledgement says so.

- ``wire.py``      the header read from raw bytes, MSH-18 character sets, the ACK (pure)
- ``fields.py``    HL7 fields -> DICOM-shaped values: names, dates, timestamps, sex (pure)
- ``messages.py``  message -> events, or the reason it is refused (pure)
- ``receiver.py``  one message in, events appended (durable), one ACK out
- ``listener.py``  the MLLP port (the ``hl7`` library's asyncio server), bounded and hard to kill
"""
