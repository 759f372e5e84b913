"""The archive's DICOM read services: Query/Retrieve (C-FIND, C-MOVE, C-GET) beside the Storage SCP."""
